//! `jitsi-router bench` against real prosody nodes: everyone meets through one router; two
//! routers that place rooms differently split them and the run fails; a dead target gives
//! errors, not a hang; an untrusted certificate and a wrong XMPP or MUC domain are named as the
//! reason.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

/// Runs `jitsi-router bench` with `args` and `--json`; its exit status and JSON report.
async fn bench(args: &[&str]) -> (Option<i32>, Value, String) {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_jitsi-router"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("bench finishes")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{stderr}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code(), report, stderr)
}

/// Two rooms of two, staying a second, arriving at once, sending no messages.
const SMALL: [&str; 10] = [
    "--rooms",
    "2",
    "--participants",
    "2",
    "--duration",
    "1s",
    "--ramp",
    "0s",
    "--message-rate",
    "0",
];

#[tokio::test(flavor = "multi_thread")]
async fn through_the_demo_prosody_fleet_everyone_joins_and_no_room_splits() {
    let demo = Demo::start(&["--prosody", "--no-prometheus"]);
    let target = format!("https://127.0.0.1:{}", demo.port);
    let args = [
        "--target",
        &target,
        "--insecure",
        "--rooms",
        "4",
        "--participants",
        "3",
        "--duration",
        "2s",
        "--ramp",
        "1s",
        "--message-rate",
        "4/s",
        "--transport",
        "mixed",
    ];
    let (code, report, stderr) = bench(&args).await;
    assert_eq!(code, Some(0), "{report}\n{stderr}");
    assert_eq!(report["participants"], 12, "{report}");
    assert_eq!(report["joined"], 12, "{report}");
    assert_eq!(
        (report["errors"].clone(), report["splits"].clone()),
        (0.into(), 0.into())
    );
    for phase in ["page_ms", "config_ms", "connect_ms", "join_ms", "rtt_ms"] {
        let p = &report[phase];
        assert!(p["count"].as_u64().unwrap() >= 12, "{phase}: {report}");
        let (p50, max) = (p["p50"].as_f64().unwrap(), p["max"].as_f64().unwrap());
        assert!(p50 > 0.0 && p50 <= max, "{phase}: {p}");
    }
    let per_node = report["rooms_per_node"].as_object().unwrap();
    assert_eq!(
        per_node.values().map(|v| v.as_u64().unwrap()).sum::<u64>(),
        4,
        "{report}"
    );
    // No domain given: both as the deployment's config.js names them.
    assert_eq!(report["xmpp_domain"]["from"], "config.js", "{report}");
    assert_eq!(report["muc_domain"]["from"], "config.js", "{report}");
    assert_eq!(report["muc_domain"]["name"], "muc.meet.jitsi", "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_domain_fails_at_once_and_names_the_option() {
    let demo = Demo::start(&["--prosody", "--no-prometheus"]);
    let target = format!("https://127.0.0.1:{}", demo.port);
    for (transport, option, domain, phase, said) in [
        (
            "websocket",
            "--xmpp-domain",
            "meet.example.com",
            "connect",
            "host-unknown",
        ),
        (
            "bosh",
            "--xmpp-domain",
            "meet.example.com",
            "connect",
            "--xmpp-domain",
        ),
        (
            "websocket",
            "--muc-domain",
            "conference.meet.example.com",
            "join",
            "--muc-domain",
        ),
    ] {
        let args = [
            &["--target", &target, "--insecure", "--transport", transport][..],
            &[option, domain][..],
            &SMALL,
        ]
        .concat();
        let started = std::time::Instant::now();
        let (code, report, _) = bench(&args).await;
        assert_eq!(code, Some(1), "{report}");
        // Well within the step timeout (10 s): the server's refusal is taken as the answer.
        assert!(started.elapsed() < Duration::from_secs(8), "{report}");
        let kinds = &report["errors_by_kind"][0];
        assert_eq!(kinds["phase"], phase, "{report}");
        let example = kinds["example"].as_str().unwrap_or_default();
        assert!(
            example.contains(said) && example.contains(domain),
            "{report}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_routers_that_place_rooms_differently_split_them_and_the_run_fails() {
    let certs = Certs::new();
    let nodes = prosody_nodes(2).await;
    // Each router has the other's node drained: every room goes elsewhere on each.
    let router = |drained: usize| {
        let mut text = config(&certs, "", &[]);
        for (i, node) in nodes.iter().enumerate() {
            text.push_str(&format!(
                "\n[[nodes]]\nname = {:?}\nupstream = {:?}\ndrain = {}\n",
                node.name(),
                node.url(),
                i == drained
            ));
        }
        Router::start(&certs, &text)
    };
    let (a, b) = (router(1), router(0));
    let (target_a, target_b) = (
        format!("https://127.0.0.1:{}", a.https.port()),
        format!("https://127.0.0.1:{}", b.https.port()),
    );
    let ca = certs.ca.to_str().unwrap();
    let args = [
        &["--target", &target_a, "--target", &target_b, "--ca", ca][..],
        &SMALL,
    ]
    .concat();
    let (code, report, stderr) = bench(&args).await;
    assert_eq!(code, Some(1), "{report}\n{stderr}");
    assert_eq!(report["splits"], 2, "{report}");
    assert_eq!(report["joined"], 4, "{report}");
    let split = &report["split_rooms"][0];
    assert_eq!(
        split["nodes"],
        serde_json::json!(["jitsi-a", "jitsi-b"]),
        "{report}"
    );

    // The same through one of them meets.
    let node = nodes[0].url();
    let args = [
        &["--target", &target_a, "--ca", ca, "--direct", &node][..],
        &SMALL,
    ]
    .concat();
    let (code, report, stderr) = bench(&args).await;
    assert_eq!(code, Some(0), "{report}\n{stderr}");
    assert_eq!(report["splits"], 0, "{report}");
    assert_eq!(report["direct"]["joined"], 4, "{report}");
    assert!(report["added_ms"]["join"]["p50"].is_number(), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_target_gives_errors_not_a_hang() {
    let target = format!("https://127.0.0.1:{}", closed_port());
    let args = [
        &["--target", &target, "--insecure", "--step-timeout", "2s"][..],
        &SMALL,
    ]
    .concat();
    let started = std::time::Instant::now();
    let (code, report, _) = bench(&args).await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["joined"], 0, "{report}");
    assert_eq!(report["errors"], 4, "{report}");
    let kinds = &report["errors_by_kind"][0];
    assert_eq!(kinds["phase"], "page", "{report}");
    assert_eq!(kinds["kind"], "connection refused", "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_certificate_is_named_as_the_reason() {
    // The demo's self-signed certificate, without `--insecure` or `--ca`.
    let demo = Demo::start(&["--no-prometheus"]);
    let target = format!("https://127.0.0.1:{}", demo.port);
    let args = [&["--target", &target, "--step-timeout", "2s"][..], &SMALL].concat();
    let (code, report, _) = bench(&args).await;
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["joined"], 0, "{report}");
    let kinds = &report["errors_by_kind"][0];
    assert_eq!(kinds["kind"], "tls", "{report}");
    let example = kinds["example"].as_str().unwrap_or_default();
    assert!(example.contains("certificate"), "{report}");
}
