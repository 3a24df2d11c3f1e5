//! Every error of issue 2 §7, seen from a client and from the command line.

mod support;

use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn invalid_rooms_get_400_with_a_reason() {
    let certs = Certs::new();
    let nodes = sim_nodes(1).await;
    let router = Router::start(&certs, &config(&certs, "", &node_entries(&nodes)));
    let client = router.client();
    let long = "a".repeat(201);
    for (path, reason) in [
        (format!("/{long}"), "too long"),
        ("/bad%0Aroom".to_owned(), "control character"),
        ("/a%2Fb".to_owned(), "'/'"),
        ("/bad%FFname".to_owned(), "UTF-8"),
        ("/http-bind?room=x%00y".to_owned(), "control character"),
    ] {
        let response = client.get(router.url(&path)).send().await.unwrap();
        assert_eq!(response.status(), 400, "{path}");
        let body = response.text().await.unwrap();
        assert!(
            body.contains(reason) && body.lines().count() == 1,
            "{path}: {body:?}"
        );
    }
    assert_eq!(
        client
            .get(router.url(&format!("/{}", "a".repeat(200))))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_cannot_steer_the_router_elsewhere() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let certs = Certs::new();
    let nodes = sim_nodes(2).await;
    // Only jitsi-a is configured; jitsi-b is alive but must never be reached.
    let router = Router::start(&certs, &config(&certs, "", &node_entries(&nodes[..1])));
    let connect = router
        .client_h1()
        .request(reqwest::Method::CONNECT, router.url("/"))
        .send()
        .await
        .unwrap();
    assert_eq!(connect.status(), 405);

    let tcp = tokio::net::TcpStream::connect(router.https).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(certs.client_config());
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = tls.connect(name, tcp).await.unwrap();
    let request = format!(
        "GET http://{}/steer?x=1 HTTP/1.1\r\nHost: {}\r\nx-sim-report: 1\r\nConnection: close\r\n\r\n",
        nodes[1].addr(),
        nodes[1].addr()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("x-sim-node: jitsi-a"), "{answer}");
    assert!(answer.contains("\"path\":\"/steer\""), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_request_head_gets_431() {
    let certs = Certs::new();
    let nodes = sim_nodes(1).await;
    let router = Router::start(&certs, &config(&certs, "", &node_entries(&nodes)));
    for client in [router.client_h1(), router.client()] {
        let response = client
            .get(router.url("/room"))
            .header("x-big", "x".repeat(17 * 1024))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 431);
        assert!(response.text().await.unwrap().contains("16384"));
        let fine = client
            .get(router.url("/room"))
            .header("x-big", "x".repeat(8 * 1024))
            .send()
            .await
            .unwrap();
        assert_eq!(fine.status(), 200);
    }
    let counted = metrics(&router).await;
    assert_eq!(
        counted["jitsi_router_requests_total{node=\"none\",class=\"4xx\"}"], 2.0,
        "both 431s are counted as the router's own answers"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_upstream_gets_502_and_the_router_carries_on() {
    let certs = Certs::new();
    let nodes = sim_nodes(1).await;
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let mut text = config(&certs, "", &[("dead", dead)]);
    text = text.replace(
        "name = \"dead\"",
        "name = \"dead\"\njvb_server_ids = [\"jvb-dead\"]",
    );
    text.push_str(&format!(
        "\n[[nodes]]\nname = \"alive\"\nupstream = {:?}\njvb_server_ids = [\"jvb-alive\"]\n",
        nodes[0].url()
    ));
    let mut router = Router::start(&certs, &text);
    let client = router.client();
    for _ in 0..3 {
        let response = client
            .get(router.url("/colibri-ws/jvb-dead/c/e"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 502);
        assert!(response
            .text()
            .await
            .unwrap()
            .contains("node dead is unreachable"));
        let ok = client
            .get(router.url("/colibri-ws/jvb-alive/c/e"))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
    }
    assert!(router.is_running());
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_upstream_gets_504_and_the_next_request_succeeds() {
    let certs = Certs::new();
    let nodes = sim_nodes(1).await;
    let router = Router::start(
        &certs,
        &config(
            &certs,
            "[upstream]\nresponse_timeout = \"1s\"\n",
            &node_entries(&nodes),
        ),
    );
    let client = router.client();
    let slow = client
        .get(router.url("/slowroom"))
        .header("x-sim-delay-ms", "3000")
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status(), 504);
    assert!(slow
        .text()
        .await
        .unwrap()
        .contains("did not answer in time"));
    let next = client.get(router.url("/slowroom")).send().await.unwrap();
    assert_eq!(next.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_node_gets_503_with_retry_after() {
    let certs = Certs::new();
    let router = Router::start(
        &certs,
        &config(&certs, "[limits]\nretry_after = \"7s\"\n", &[]),
    );
    let client = router.client();
    for path in ["/someroom", "/", "/http-bind?room=x"] {
        let response = client.get(router.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 503, "{path}");
        assert_eq!(response.headers()["retry-after"], "7");
        assert!(!response.text().await.unwrap().is_empty());
    }
}

fn assert_one_line_failure(args: &[&str], expect: &[&str]) {
    let (code, _, stderr) = run_router(args);
    assert_eq!(code, Some(1), "{args:?}: {stderr}");
    let stderr = stderr.trim();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for part in expect {
        assert!(stderr.contains(part), "{stderr:?} should contain {part:?}");
    }
}

fn write_config(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("router.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn startup_failures_are_one_clear_line_and_exit_1() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let nodes = [("n1", "http://127.0.0.1:9".to_owned())];
    let good = config(&certs, "", &nodes);

    let missing = write_config(dir.path(), &good.replace("fullchain.pem", "nope.pem"));
    assert_one_line_failure(
        &["serve", "--config", &missing],
        &["nope.pem", "certificate"],
    );

    std::fs::write(dir.path().join("garbage.pem"), "not a key").unwrap();
    let garbage = write_config(
        dir.path(),
        &good.replace(
            certs.key.to_str().unwrap(),
            dir.path().join("garbage.pem").to_str().unwrap(),
        ),
    );
    assert_one_line_failure(
        &["serve", "--config", &garbage],
        &["garbage.pem", "private key"],
    );

    let other = Certs::new();
    let mismatched = write_config(
        dir.path(),
        &good.replace(certs.key.to_str().unwrap(), other.key.to_str().unwrap()),
    );
    assert_one_line_failure(&["serve", "--config", &mismatched], &["does not match"]);

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let in_use = write_config(
        dir.path(),
        &good.replacen("127.0.0.1:0", &format!("127.0.0.1:{port}"), 1),
    );
    assert_one_line_failure(
        &["serve", "--config", &in_use],
        &[
            &format!("127.0.0.1:{port}"),
            "cannot listen",
            "another process listens there",
        ],
    );
    // TEST-NET-1: no interface here has it.
    let elsewhere = write_config(dir.path(), &good.replacen("127.0.0.1:0", "192.0.2.1:0", 1));
    assert_one_line_failure(
        &["serve", "--config", &elsewhere],
        &["cannot listen on 192.0.2.1:0", "no interface of this host"],
    );

    let bad = write_config(
        dir.path(),
        &good.replace("[tls]", "[routing]\nmode = \"fast\"\n\n[tls]"),
    );
    assert_one_line_failure(
        &["serve", "--config", &bad],
        &["router.toml", "routing.mode", "\"fast\""],
    );
    assert_one_line_failure(
        &["check", "--config", &bad],
        &["router.toml", "routing.mode", "\"fast\""],
    );

    // A CA file for TLS to Redis that is not one: named by `check` and by `serve`, which
    // does not start.
    std::fs::write(dir.path().join("redis-ca.pem"), "not a certificate").unwrap();
    let bad_ca = write_config(
        dir.path(),
        &good.replace(
            "[tls]",
            "[pins.redis]\nurl = \"rediss://127.0.0.1:1\"\nca = \"redis-ca.pem\"\n\n[tls]",
        ),
    );
    for command in ["check", "serve"] {
        assert_one_line_failure(
            &[command, "--config", &bad_ca],
            &["pins.redis", "redis-ca.pem", "no CERTIFICATE block found"],
        );
    }

    let bad_log = write_config(
        dir.path(),
        &good.replace("[tls]", "[log]\nformat = \"xml\"\n\n[tls]"),
    );
    assert_one_line_failure(&["serve", "--config", &bad_log], &["log.format", "\"xml\""]);

    let unknown = write_config(
        dir.path(),
        &good.replace("[tls]", "[routing]\nmodee = \"proxy\"\n\n[tls]"),
    );
    assert_one_line_failure(&["serve", "--config", &unknown], &["router.toml", "modee"]);

    let exposed = write_config(
        dir.path(),
        &good.replace(
            "admin_listen = \"127.0.0.1:0\"",
            "admin_listen = \"0.0.0.0:0\"",
        ),
    );
    assert_one_line_failure(
        &["serve", "--config", &exposed],
        &["server.admin_listen", "token"],
    );

    let nowhere = dir.path().join("absent.toml");
    assert_one_line_failure(
        &["serve", "--config", nowhere.to_str().unwrap()],
        &["absent.toml", "cannot read"],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line() {
    let certs = Certs::new();
    let nodes = sim_nodes(1).await;
    let router = Router::start(
        &certs,
        &config(&certs, "[log]\nformat = \"json\"\n", &node_entries(&nodes)),
    );
    router
        .client()
        .get(router.url("/JsonRoom"))
        .send()
        .await
        .unwrap();
    log_shows(&router, "room pinned").await;
    let logs = router.logs();
    let events: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let pinned = events
        .iter()
        .find(|e| e["fields"]["message"] == "room pinned")
        .unwrap();
    assert_eq!(pinned["fields"]["room"], "jsonroom");
    assert_eq!(pinned["fields"]["node"], "jitsi-a");
}

#[test]
fn check_prints_what_it_understood() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        &certs,
        "[routing]\nmode = \"redirect\"\n\n[prometheus]\nurl = \"http://127.0.0.1:9090\"\ninterval = \"15s\"\n\n\
         [pins.redis]\nurl = \"redis://:s3cret@pins/0\"\nsentinels = [\"10.0.0.5:26379\", \"10.0.0.6:26379\"]\n",
        &[],
    )
    .replace("[server]\n", "[server]\nwebsockets_over_http2 = true\n")
        + "\n[[nodes]]\nname = \"jitsi-1\"\nupstream = \"http://10.0.0.11:80\"\npublic_url = \"https://jitsi-1.example.com\"\ninstance = \"10.0.0.11:9100\"\n\
           weight = 2.5\nmax_rooms = 500\ncensus_url = \"http://10.0.0.11:5280/room-census\"\n";
    let path = write_config(dir.path(), &text);
    let (code, stdout, stderr) = run_router(&["check", "--config", &path]);
    assert_eq!(code, Some(0), "{stderr}");
    for part in [
        "OK",
        "WebSockets over HTTP/2 offered",
        "127.0.0.1:0",
        "redirect",
        "http://127.0.0.1:9090",
        "15s",
        "jitsi-1",
        "10.0.0.11:9100",
        "https://jitsi-1.example.com",
        "max_cpu 0.85",
        "GET /http-bind",
        "admin:",
        "logs as text",
        "redis://:***@pins/0, its host the primary Sentinel names (10.0.0.5:26379, 10.0.0.6:26379)",
        "weight 2.5, full at 500 rooms",
        "census GET http://10.0.0.11:5280/room-census every 10s",
    ] {
        assert!(stdout.contains(part), "{part} missing from:\n{stdout}");
    }
    assert!(!stdout.contains("s3cret"), "{stdout}");
}

/// A health path the usual Jitsi web fronts answer with the room page is named by `check`, with
/// the path that does reach the signalling; the default path has no such warning.
#[test]
fn check_warns_of_a_health_path_that_tells_nothing() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &config(&certs, "", &[]));
    let (code, stdout, stderr) = run_router(&["check", "--config", &path]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stdout.contains("warning"), "{stdout}");

    let text = config(&certs, "[health]\npath = \"/about/health\"\n", &[]);
    let path = write_config(dir.path(), &text);
    let (code, stdout, stderr) = run_router(&["check", "--config", &path]);
    assert_eq!(code, Some(0), "a warning, not an error: {stderr}");
    assert!(
        stdout.contains("warning: health.path /about/health: docker-jitsi-meet's")
            && stdout.contains("the default /http-bind reaches prosody"),
        "{stdout}"
    );
}

#[test]
fn help_works_on_every_subcommand() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["check", "--help"],
        &["demo", "--help"],
    ] {
        let (code, stdout, _) = run_router(args);
        assert_eq!(code, Some(0), "{args:?}");
        assert!(stdout.contains("Usage"), "{args:?}: {stdout}");
    }
}

#[test]
fn shipped_example_config_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/router.toml");
    let config = jitsi_router::config::Config::load(&path).unwrap();
    assert!(!config.nodes.is_empty());
    assert!(config.prometheus.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_serves_three_nodes_and_reports_rooms() {
    let demo = Demo::start(&[]);
    let (port, seen) = (demo.port, &demo.banner);
    assert!(
        seen.contains("jitsi-a") && seen.contains("jitsi-b") && seen.contains("jitsi-c"),
        "{seen}"
    );
    assert!(
        seen.contains(&format!("https://localhost:{port}/")),
        "{seen}"
    );
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .resolve("localhost", ([127, 0, 0, 1], port).into())
        .build()
        .unwrap();
    let page = client
        .get(format!("https://localhost:{port}/DemoRoom"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let node = shard(&page);
    assert!(page
        .text()
        .await
        .unwrap()
        .contains(&format!("is on node <code>{node}</code>")));
    let bosh = client
        .post(format!("https://localhost:{port}/http-bind?room=demoroom"))
        .body("<body/>")
        .send()
        .await
        .unwrap();
    assert_eq!(shard(&bosh), node);
    let line = demo.lines.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(line.trim(), format!("room \"demoroom\" → {node}"));
}

#[test]
fn a_demo_whose_port_is_taken_says_how_to_pick_another() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    assert_one_line_failure(
        &["demo", "--no-prometheus", "--listen", &addr],
        &[&format!("cannot listen on {addr}"), "demo --listen"],
    );
}
