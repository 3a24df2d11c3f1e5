//! Health checks that see a node's signalling: real prosody behind a real nginx front that, like
//! docker-jitsi-meet's, has no `/about/health` and answers every unknown path with the room page;
//! and a node's extra checks (jicofo's and the videobridge's own health).

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::nginx::Nginx;
use support::*;

/// The node's entry in `GET /api/nodes`.
async fn node_status(router: &Router, name: &str) -> Value {
    let nodes: Value = router.admin_json("/api/nodes").await;
    let found = nodes.as_array().unwrap().iter().find(|n| n["name"] == name);
    found
        .cloned()
        .unwrap_or_else(|| panic!("{name} not in {nodes}"))
}

async fn node_of(router: &Router, room: &str) -> String {
    let response = router
        .client()
        .get(router.url(&format!("/{room}")))
        .send()
        .await;
    let response = response.unwrap();
    assert_eq!(response.status(), 200, "{room}");
    shard(&response)
}

/// A room, named `prefix-<n>`, that lands on `node`: room names spread over the nodes without
/// CPU data.
async fn a_room_on(router: &Router, node: &str, prefix: &str) -> String {
    for i in 0..50 {
        let room = format!("{prefix}-{i}");
        if node_of(router, &room).await == node {
            return room;
        }
    }
    panic!("no room of 50 lands on {node}");
}

/// A router over `nodes[1]` as jitsi-b and `nodes[0]` as jitsi-a, whose entry ends with
/// `line`, checking health every 200 ms and changing it on one result.
fn checked_every_200ms(certs: &Certs, nodes: &[SimNode], line: &str) -> Router {
    let health = "[health]\ninterval = \"200ms\"\nfall = 1\nrise = 1\n";
    let entries = [("jitsi-b", nodes[1].url()), ("jitsi-a", nodes[0].url())];
    Router::start(certs, &(config(certs, health, &entries) + line))
}

/// Waits until the node's health is `healthy`; returns how long that took.
async fn until_health(router: &Router, name: &str, healthy: bool, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let status = node_status(router, name).await;
        if status["healthy"] == healthy {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{name} not {} within {limit:?}: {status}",
            if healthy { "healthy" } else { "unhealthy" }
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const INTERVAL: Duration = Duration::from_millis(300);
const FALL: u32 = 2;
const RISE: u32 = 2;

#[tokio::test(flavor = "multi_thread")]
async fn a_node_whose_prosody_is_down_is_unhealthy_though_its_web_front_answers_200() {
    let certs = Certs::new();
    let mut prosody = prosody_nodes(2).await;
    let mut fronts = Vec::new();
    for node in &prosody {
        fronts.push(Nginx::jitsi_front(node.signalling()).await);
    }
    let entries = [("jitsi-a", fronts[0].url()), ("jitsi-b", fronts[1].url())];
    let health = format!(
        "[health]\ninterval = \"{}ms\"\ntimeout = \"1s\"\nfall = {FALL}\nrise = {RISE}\n",
        INTERVAL.as_millis()
    );
    let router = Router::start(&certs, &config(&certs, &health, &entries));
    until_health(&router, "jitsi-a", true, Duration::from_secs(10)).await;
    until_health(&router, "jitsi-b", true, Duration::from_secs(10)).await;
    let on_a = a_room_on(&router, "jitsi-a", "standup").await;

    prosody[0].stop_prosody();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let about = client
        .get(fronts[0].url() + "/about/health")
        .send()
        .await
        .unwrap();
    assert_eq!(
        about.status(),
        200,
        "the front's /about/health says nothing of prosody"
    );
    // Within fall × interval of the next check (plus one interval and the time of a check).
    let took = until_health(&router, "jitsi-a", false, Duration::from_secs(10)).await;
    let expected = INTERVAL * (FALL + 1) + Duration::from_secs(1);
    assert!(
        took <= expected,
        "unhealthy after {took:?}, expected within {expected:?}"
    );
    let status = node_status(&router, "jitsi-a").await;
    let why = status["health_failure"].as_str().unwrap_or_default();
    assert!(
        why.contains("/http-bind") && why.contains("502"),
        "{status}"
    );

    for i in 0..10 {
        assert_eq!(
            node_of(&router, &format!("new-{i}")).await,
            "jitsi-b",
            "a new room"
        );
    }
    assert_eq!(
        node_of(&router, &on_a).await,
        "jitsi-b",
        "its room moves on its next request"
    );

    prosody[0].restart_prosody().await.unwrap();
    until_health(
        &router,
        "jitsi-a",
        true,
        INTERVAL * (RISE + 2) + Duration::from_secs(5),
    )
    .await;
    let status = node_status(&router, "jitsi-a").await;
    assert_eq!(status["health_failure"], Value::Null, "{status}");
    assert_eq!(
        node_of(&router, &on_a).await,
        "jitsi-b",
        "a moved room stays where it went"
    );
    let _ = fronts[0].errors();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_sends_plain_http_to_https_is_unhealthy_and_says_where_to() {
    // The plain-HTTP port of a docker-jitsi-meet node with ENABLE_HTTP_REDIRECT=1: every
    // request, the health check's included, is answered with a redirect.
    let certs = Certs::new();
    let front = Nginx::redirecting_to_https().await;
    let health = format!(
        "[health]\ninterval = \"{}ms\"\nfall = 1\n",
        INTERVAL.as_millis()
    );
    let router = Router::start(
        &certs,
        &config(&certs, &health, &[("jitsi-a", front.url())]),
    );
    until_health(&router, "jitsi-a", false, Duration::from_secs(10)).await;
    let status = node_status(&router, "jitsi-a").await;
    let why = status["health_failure"].as_str().unwrap_or_default();
    assert!(
        why.contains("status 301 to https://") && why.contains("/http-bind"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_extra_check_of_a_node_must_pass_and_the_failing_one_is_named() {
    let certs = Certs::new();
    let nodes = sim_nodes(2).await;
    // jitsi-c stands in for jitsi-a's jicofo: its /about/health is the extra check.
    let jicofo = sim_nodes(3).await.pop().unwrap();
    let extra = format!("{}/about/health", jicofo.url());
    let line = format!("health_checks = [{{ url = {extra:?}, status = 200 }}]\n");
    let router = checked_every_200ms(&certs, &nodes, &line);
    until_health(&router, "jitsi-a", true, Duration::from_secs(10)).await;
    let status = node_status(&router, "jitsi-a").await;
    assert_eq!(
        status["health_checks"][0]["url"],
        extra.as_str(),
        "{status}"
    );

    jicofo.set_healthy(false);
    until_health(&router, "jitsi-a", false, Duration::from_secs(10)).await;
    let status = node_status(&router, "jitsi-a").await;
    let why = status["health_failure"].as_str().unwrap_or_default();
    assert!(
        why.contains(&extra) && why.contains("status 503 (expected 200)"),
        "{status}"
    );
    assert_eq!(node_status(&router, "jitsi-b").await["healthy"], true);

    jicofo.set_healthy(true);
    until_health(&router, "jitsi-a", true, Duration::from_secs(10)).await;
}

#[test]
fn an_extra_check_with_a_bad_url_or_status_is_refused_by_name() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    for (checks, named) in [
        (
            "[{ url = \"ftp://x/about/health\" }]",
            "nodes[0].health_checks[0].url",
        ),
        (
            "[{ url = \"http://x/about/health\", status = 42 }]",
            "nodes[0].health_checks[0].status",
        ),
        (
            "[{ url = \"http://x/about/health\", expect = 200 }]",
            "expect",
        ),
    ] {
        let text = config(&certs, "", &[("jitsi-a", "http://127.0.0.1:1".into())])
            + &format!("health_checks = {checks}\n");
        let path = dir.path().join("router.toml");
        std::fs::write(&path, text).unwrap();
        let (code, _, stderr) = run_router(&["check", "--config", path.to_str().unwrap()]);
        assert_eq!(code, Some(1), "{checks}: {stderr}");
        assert!(stderr.contains(named), "{checks}: {stderr}");
    }
}

/// A fake jitsi/signal-sidecar: `GET /signal/report` answers the status and body set last.
struct Sidecar {
    url: String,
    answer: std::sync::Arc<std::sync::Mutex<(u16, String)>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sidecar {
    async fn start() -> Sidecar {
        let answer = std::sync::Arc::new(std::sync::Mutex::new((200, String::new())));
        let shared = answer.clone();
        let (url, task) = serve_http(move |_req| {
            let (status, body) = shared.lock().unwrap().clone();
            async move {
                let mut response = hyper::Response::new(body);
                *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                response
            }
        })
        .await;
        let sidecar = Sidecar { url, answer, task };
        sidecar.report(200, true, "ready");
        sidecar
    }

    /// Answers a report (signal-sidecar's shape, its service details left out).
    fn report(&self, code: u16, healthy: bool, status: &str) {
        let body = format!(
            r#"{{"healthy":{healthy},"status":"{status}","services":{{"jicofoReachable":true}},"stats":{{"jicofoParticipants":7}}}}"#
        );
        self.answer_with(code, &body);
    }

    fn answer_with(&self, code: u16, body: &str) {
        *self.answer.lock().unwrap() = (code, body.to_owned());
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until the node's entry in `GET /api/nodes` satisfies `holds`.
async fn until_node(router: &Router, name: &str, what: &str, holds: impl Fn(&Value) -> bool) {
    let mut last = Value::Null;
    for _ in 0..200 {
        last = node_status(router, name).await;
        if holds(&last) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name}: not {what} within 10 s: {last}");
}

/// A node's signal-sidecar (what meet.jit.si's HAProxy asks) drains it from the node's side
/// (`drain`), takes it out (`maint`), undrains it (`ready`), and its health is one more check.
#[tokio::test(flavor = "multi_thread")]
async fn a_nodes_signal_sidecar_drains_it_or_takes_it_out() {
    let certs = Certs::new();
    let nodes = sim_nodes(2).await;
    let sidecar = Sidecar::start().await;
    let report = format!("{}/signal/report", sidecar.url);
    let router = checked_every_200ms(&certs, &nodes, &format!("signal_report = {report:?}\n"));
    until_node(&router, "jitsi-a", "checked", |n| {
        n["last_health_check"].is_number()
    })
    .await;
    let status = node_status(&router, "jitsi-a").await;
    assert_eq!(status["signal_report"], report.as_str(), "{status}");
    assert_eq!(status["healthy"], true, "{status}");
    assert_eq!(status["draining"], false, "{status}");
    let on_a = a_room_on(&router, "jitsi-a", "retro").await;

    // `drain`: the node keeps its rooms and takes no new one; the operator cannot undrain it.
    sidecar.report(200, true, "drain");
    until_node(&router, "jitsi-a", "drained", |n| {
        n["draining"] == true && n["drain_reported"] == true
    })
    .await;
    log_shows(&router, "node drained by its signal-sidecar").await;
    for i in 0..10 {
        assert_eq!(node_of(&router, &format!("planning-{i}")).await, "jitsi-b");
    }
    assert_eq!(
        node_of(&router, &on_a).await,
        "jitsi-a",
        "a drained node keeps its rooms"
    );
    let undrained = router.set_drain("jitsi-a", false).await;
    assert_eq!(undrained["draining"], true, "{undrained}");
    assert_eq!(undrained["drain_reported"], true, "{undrained}");
    assert_eq!(node_status(&router, "jitsi-a").await["healthy"], true);

    // `maint`: out, as HAProxy's agent takes a server out; its rooms move.
    sidecar.report(200, true, "maint");
    until_health(&router, "jitsi-a", false, Duration::from_secs(10)).await;
    let why = node_status(&router, "jitsi-a").await["health_failure"].clone();
    assert!(
        why.as_str()
            .is_some_and(|why| why.contains(&report) && why.contains("reports maint")),
        "{why}"
    );
    assert_eq!(node_of(&router, &on_a).await, "jitsi-b", "the room moved");

    // `ready` again: healthy and taking rooms.
    sidecar.report(200, true, "ready");
    until_node(&router, "jitsi-a", "back", |n| {
        n["healthy"] == true && n["draining"] == false
    })
    .await;
    log_shows(&router, "node undrained by its signal-sidecar").await;

    // An unhealthy report, and an answer that is no report, fail the check and name why.
    sidecar.report(503, false, "ready");
    until_health(&router, "jitsi-a", false, Duration::from_secs(10)).await;
    let why = node_status(&router, "jitsi-a").await["health_failure"].clone();
    assert!(
        why.as_str().is_some_and(
            |why| why.contains("status 503, signal-sidecar reports the node unhealthy")
        ),
        "{why}"
    );
    sidecar.report(200, true, "ready");
    until_health(&router, "jitsi-a", true, Duration::from_secs(10)).await;
    sidecar.answer_with(200, "OK");
    until_health(&router, "jitsi-a", false, Duration::from_secs(10)).await;
    let why = node_status(&router, "jitsi-a").await["health_failure"].clone();
    assert!(
        why.as_str()
            .is_some_and(|why| why.contains("not a signal-sidecar report")),
        "{why}"
    );
    assert_eq!(node_status(&router, "jitsi-a").await["draining"], false);

    // A node whose report is no longer asked for is not held drained by its last one.
    sidecar.report(200, true, "drain");
    until_node(&router, "jitsi-a", "drained", |n| n["draining"] == true).await;
    let put = reqwest::Client::new()
        .put(router.admin_url("/api/nodes/jitsi-a"))
        .body(format!(r#"{{"upstream": {:?}}}"#, nodes[0].url()))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    until_node(&router, "jitsi-a", "undrained", |n| {
        n["draining"] == false && n["signal_report"].is_null()
    })
    .await;
}
