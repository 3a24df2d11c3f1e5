//! A real Prometheus server scraping the simulated nodes' CPU counters steers new rooms to the
//! least-busy node; the router keeps routing when Prometheus goes away.

mod support;

use std::time::Duration;

use support::*;

const QUERY: &str = r#"1 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle"}[5s]))"#;

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_steers_new_rooms_to_the_least_busy_node() {
    let certs = Certs::new();
    let nodes = sim_nodes(3).await;
    for (node, busy) in nodes.iter().zip([0.9, 0.2, 0.6]) {
        node.set_busy(busy);
    }
    let mut prometheus =
        Prometheus::start(&nodes.iter().map(SimNode::addr).collect::<Vec<_>>()).await;
    let text = config(
        &certs,
        // CPU steering alone: a loose bound, so bounded load (tested on its own) stays out of it.
        &format!(
            "[placement]\nbalance_factor = 100.0\n\n[prometheus]\nurl = {:?}\nquery = '{QUERY}'\ninterval = \"1s\"\n",
            prometheus.url
        ),
        &[],
    ) + &nodes_with_instances(&nodes, &|_| String::new());
    let mut router = Router::start(&certs, &text);
    let client = router.client();

    // jitsi-b is the least busy: new rooms go there.
    wait_until_least_busy(&prometheus, &nodes, 1).await;
    new_rooms_land_on(&router, &["steer-1", "steer-2", "steer-3"], "jitsi-b").await;
    let seen = metrics(&router).await;
    let cpu = |node: &str| seen[&format!("jitsi_router_node_cpu_ratio{{node=\"{node}\"}}")];
    assert!(cpu("jitsi-b") < cpu("jitsi-a"), "{seen:?}");
    assert!(seen["jitsi_router_prometheus_snapshot_age_seconds"] < 5.0);

    // The load shifts: jitsi-c is now the least busy; new rooms follow, old rooms stay.
    nodes[1].set_busy(0.95);
    nodes[2].set_busy(0.05);
    wait_until_least_busy(&prometheus, &nodes, 2).await;
    new_rooms_land_on(&router, &["shift-1", "shift-2", "shift-3"], "jitsi-c").await;
    let old = client
        .get(router.url("/http-bind?room=steer-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        shard(&old),
        "jitsi-b",
        "a pinned room never moves while its node is there"
    );

    // Prometheus goes away: the router warns, keeps its last snapshot and keeps routing.
    prometheus.stop();
    eventually(
        Duration::from_secs(10),
        "the router to notice prometheus is gone",
        || async { router.logs().contains("prometheus query failed") },
    )
    .await;
    for i in 0..10 {
        let response = client
            .get(router.url(&format!("/after-{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let old = client.get(router.url("/steer-2")).send().await.unwrap();
    assert_eq!(shard(&old), "jitsi-b");
    assert!(router.is_running());
}

/// Waits until Prometheus ranks `nodes[least]` strictly least busy, then for two router polls.
async fn wait_until_least_busy(prometheus: &Prometheus, nodes: &[SimNode], least: usize) {
    let addr = |i: usize| nodes[i].addr().to_string();
    eventually(
        Duration::from_secs(30),
        "prometheus to rank the nodes",
        || async {
            let cpu = prometheus.query(QUERY).await;
            cpu.len() == nodes.len()
                && (0..nodes.len()).all(|i| i == least || cpu[&addr(least)] < cpu[&addr(i)])
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
}

async fn new_rooms_land_on(router: &Router, rooms: &[&str], node: &str) {
    let per_node = place_rooms(router, rooms.iter().map(|r| r.to_string())).await;
    let all_there = std::collections::BTreeMap::from([(node.to_owned(), rooms.len())]);
    assert_eq!(
        per_node, all_there,
        "new rooms should go to the least-busy node"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_prometheus_answer_keeps_routing_alive() {
    let certs = Certs::new();
    let nodes = sim_nodes(2).await;
    // A node's /metrics endpoint is not a Prometheus API: every query answer is garbage.
    let sections = format!(
        "[prometheus]\nurl = {:?}\ninterval = \"200ms\"\n",
        nodes[0].url()
    );
    let mut router = Router::start(&certs, &config(&certs, &sections, &node_entries(&nodes)));
    eventually(
        Duration::from_secs(10),
        "a logged query failure",
        || async { router.logs().contains("prometheus query failed") },
    )
    .await;
    assert!(metrics(&router).await["jitsi_router_prometheus_refresh_failures_total"] >= 1.0);
    let response = router
        .client()
        .get(router.url("/garbage-room"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(router.is_running());
}

/// An idle node's idle counter grows by about one second a second, and `rate()` over it reads a
/// hair above that now and then, so the query answers values such as -0.00002 busy. That is an
/// idle node, not a failed query: readings keep coming, and new rooms go to it.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_node_reads_as_idle_and_takes_the_new_rooms() {
    let certs = Certs::new();
    let nodes = sim_nodes(2).await;
    nodes[0].set_busy(0.5);
    nodes[1].set_busy(0.0);
    let prometheus = Prometheus::start(&nodes.iter().map(SimNode::addr).collect::<Vec<_>>()).await;
    let text = config(
        &certs,
        &format!(
            "[placement]\nbalance_factor = 100.0\n\n[prometheus]\nurl = {:?}\nquery = '{QUERY}'\ninterval = \"200ms\"\n",
            prometheus.url
        ),
        &[],
    ) + &nodes_with_instances(&nodes, &|_| String::new());
    let router = Router::start(&certs, &text);
    wait_until_least_busy(&prometheus, &nodes, 1).await;
    // Some 40 readings of the idle node.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let seen = metrics(&router).await;
    assert_eq!(
        seen["jitsi_router_prometheus_refresh_failures_total"],
        0.0,
        "{}",
        router.logs()
    );
    let idle = seen["jitsi_router_node_cpu_ratio{node=\"jitsi-b\"}"];
    assert!((0.0..0.01).contains(&idle), "{idle}");
    assert!(
        !router.logs().contains("not a busy fraction"),
        "{}",
        router.logs()
    );
    new_rooms_land_on(&router, &["idle-1", "idle-2", "idle-3"], "jitsi-b").await;
}

/// A node whose `instance` matches no series of the answer (node_exporter's `host:9100` against
/// the default, the upstream's `host:port`) is named in a warning once two answers in a row
/// miss it, with the values the answer does have; the other nodes' readings stand.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_no_series_matches_is_named() {
    let certs = Certs::new();
    let nodes = sim_nodes(2).await;
    let prometheus = Prometheus::start(&nodes.iter().map(SimNode::addr).collect::<Vec<_>>()).await;
    let entries = format!(
        "\n[[nodes]]\nname = \"jitsi-a\"\nupstream = {:?}\ninstance = \"{}\"\n\n[[nodes]]\nname = \"jitsi-b\"\nupstream = {:?}\ninstance = \"127.0.0.1:9100\"\n",
        nodes[0].url(),
        nodes[0].addr(),
        nodes[1].url(),
    );
    let sections = format!(
        "[prometheus]\nurl = {:?}\nquery = '{QUERY}'\ninterval = \"200ms\"\n",
        prometheus.url
    );
    eventually(Duration::from_secs(30), "both nodes' series", || async {
        prometheus.query(QUERY).await.len() == 2
    })
    .await;
    let router = Router::start(&certs, &(config(&certs, &sections, &[]) + &entries));
    eventually(Duration::from_secs(30), "the warning", || async {
        router
            .logs()
            .contains("no series for these nodes' instance")
    })
    .await;
    let logs = router.logs();
    let line = (logs.lines())
        .find(|l| l.contains("no series for these nodes' instance"))
        .unwrap();
    assert!(
        line.contains(r#"nodes=jitsi-b ("127.0.0.1:9100")"#),
        "{line}"
    );
    // The values the answer has include jitsi-b's own: what its `instance` should be.
    assert!(
        line.contains(&format!("{:?}", nodes[1].addr().to_string())),
        "{line}"
    );
    eventually(Duration::from_secs(30), "jitsi-a's reading", || async {
        metrics(&router)
            .await
            .contains_key("jitsi_router_node_cpu_ratio{node=\"jitsi-a\"}")
    })
    .await;
    let seen = metrics(&router).await;
    assert!(
        !seen.contains_key("jitsi_router_node_cpu_ratio{node=\"jitsi-b\"}"),
        "{seen:?}"
    );
    assert_eq!(seen["jitsi_router_prometheus_refresh_failures_total"], 0.0);
}

/// `[prometheus]` applies on reload: added, the router starts reading CPU without a restart;
/// taken out, it forgets the readings (new rooms go by hashing) rather than keep old ones.
#[tokio::test(flavor = "multi_thread")]
async fn a_prometheus_section_added_or_removed_by_reload_applies() {
    let certs = Certs::new();
    let nodes = sim_nodes(2).await;
    let prometheus = Prometheus::start(&nodes.iter().map(SimNode::addr).collect::<Vec<_>>()).await;
    let entries = nodes_with_instances(&nodes, &|_| String::new());
    let router = Router::start(&certs, &(config(&certs, "", &[]) + &entries));
    let reading = || async {
        (metrics(&router).await).contains_key("jitsi_router_node_cpu_ratio{node=\"jitsi-a\"}")
    };
    assert!(!reading().await, "no [prometheus], no reading");

    let sections = format!(
        "[prometheus]\nurl = {:?}\nquery = '{QUERY}'\ninterval = \"200ms\"\n",
        prometheus.url
    );
    std::fs::write(
        router.config_path(),
        config(&certs, &sections, &[]) + &entries,
    )
    .unwrap();
    eventually(
        Duration::from_secs(30),
        "a reading after the reload",
        reading,
    )
    .await;

    std::fs::write(router.config_path(), config(&certs, "", &[]) + &entries).unwrap();
    eventually(
        Duration::from_secs(10),
        "the readings forgotten",
        || async { !reading().await },
    )
    .await;
    assert_applied_live(&router);
}

/// `check --probe` asks what `serve` would, once: each node's health check and Prometheus's
/// CPU query, a node to a line; a node whose signalling is down, and one whose `instance` no
/// series carries, are named with the reason, and the exit status says a probe failed.
#[tokio::test(flavor = "multi_thread")]
async fn check_probe_says_what_each_node_and_prometheus_answered() {
    let certs = Certs::new();
    let nodes = sim_nodes(2).await;
    nodes[1].set_healthy(false);
    let prometheus = Prometheus::start(&nodes.iter().map(SimNode::addr).collect::<Vec<_>>()).await;
    eventually(Duration::from_secs(30), "both nodes' series", || async {
        prometheus.query(QUERY).await.len() == 2
    })
    .await;
    let sections = format!(
        "[prometheus]\nurl = {:?}\nquery = '{QUERY}'\n",
        prometheus.url
    );
    let entries = format!(
        "\n[[nodes]]\nname = \"jitsi-a\"\nupstream = {:?}\ninstance = \"{}\"\n\n[[nodes]]\nname = \"jitsi-b\"\nupstream = {:?}\ninstance = \"127.0.0.1:9100\"\n",
        nodes[0].url(),
        nodes[0].addr(),
        nodes[1].url(),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("router.toml");
    std::fs::write(&path, config(&certs, &sections, &[]) + &entries).unwrap();
    let path = path.to_str().unwrap().to_owned();
    let (code, stdout, stderr) =
        tokio::task::spawn_blocking(move || run_router(&["check", "--config", &path, "--probe"]))
            .await
            .unwrap();
    let line = |node: &str, what: &str| {
        (stdout.lines())
            .find(|l| l.trim_start().starts_with(node) && l.contains(&format!(" {what} ")))
            .unwrap_or_else(|| panic!("no {what} line for {node} in:\n{stdout}"))
            .to_owned()
    };
    assert!(line("jitsi-a", "health").ends_with("passed"), "{stdout}");
    assert!(line("jitsi-a", "cpu").ends_with("% busy"), "{stdout}");
    let health_b = line("jitsi-b", "health");
    assert!(
        health_b.contains("FAILED, GET") && health_b.contains("/http-bind: status 502"),
        "{health_b}"
    );
    let cpu_b = line("jitsi-b", "cpu");
    assert!(
        cpu_b.contains(r#"FAILED, no series with instance="127.0.0.1:9100""#)
            && cpu_b.contains(&nodes[1].addr().to_string()),
        "the values answered name jitsi-b's own: {cpu_b}"
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("2 of the probes failed"), "{stderr}");
}
