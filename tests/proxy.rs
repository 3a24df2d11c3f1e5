//! The router binary in proxy and redirect mode against simulated Jitsi nodes.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use support::*;
use tokio_tungstenite::tungstenite::Message;

async fn fleet(n: usize, sections: &str) -> (Certs, Vec<SimNode>, Router) {
    let certs = Certs::new();
    let nodes = sim_nodes(n).await;
    let router = Router::start(&certs, &config(&certs, sections, &node_entries(&nodes)));
    (certs, nodes, router)
}

#[tokio::test(flavor = "multi_thread")]
async fn one_room_one_node_over_every_url_form() {
    let (_certs, _nodes, router) = fleet(3, "").await;
    let client = router.client();
    let forms = [
        "/TeamSync",
        "/teamsync",
        "/team%53ync",
        "/TEAMSYNC/",
        "/http-bind?room=teamsync",
        "/http-bind?room=TeamSync&sid=1",
        "/xmpp-websocket?room=teamsync",
        "/config.js?room=team%73ync",
        "/conference-request/v1?room=teamsync",
        "/room-size?room=teamsync&domain=meet.example.com",
    ];
    let mut seen = HashSet::new();
    for round in 0..5 {
        for form in forms {
            let (report, shard) = report(&client, &router.url(form)).await;
            assert_eq!(
                report["node"],
                shard.as_str(),
                "{form}: shard header names the node that answered"
            );
            seen.insert(shard);
            assert!(
                seen.len() == 1,
                "round {round}, {form}: room split over {seen:?}"
            );
        }
    }
    let posted = client
        .post(router.url("/http-bind?room=TeamSync"))
        .body("<body rid='1'/>")
        .send()
        .await
        .unwrap();
    assert_eq!(shard(&posted), *seen.iter().next().unwrap());
    assert!(
        posted.text().await.unwrap().contains("received='15'"),
        "the body streamed to the node"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn many_rooms_spread_over_nodes() {
    let (_certs, _nodes, router) = fleet(3, "").await;
    let client = router.client();
    let mut per_node: HashMap<String, usize> = HashMap::new();
    let mut first = HashMap::new();
    for i in 0..90 {
        let response = client
            .get(router.url(&format!("/room-{i}")))
            .send()
            .await
            .unwrap();
        let node = shard(&response);
        first.insert(i, node.clone());
        *per_node.entry(node).or_default() += 1;
    }
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    assert!(
        per_node.values().all(|&n| n >= 15),
        "uneven spread: {per_node:?}"
    );
    for (i, node) in first {
        let again = client
            .get(router.url(&format!("/http-bind?room=ROOM-{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(shard(&again), node, "room-{i} moved");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_are_part_of_the_key_and_paths_pass_untouched() {
    let (_certs, _nodes, router) = fleet(3, "").await;
    let client = router.client();
    let (page, node) = report(&client, &router.url("/Acme/Standup")).await;
    assert_eq!(page["path"], "/Acme/Standup");
    let (bosh, bosh_node) = report(&client, &router.url("/acme/http-bind?room=standup")).await;
    assert_eq!(bosh["path"], "/acme/http-bind");
    assert_eq!(bosh["query"], "room=standup");
    assert_eq!(bosh_node, node);
    report(&client, &router.url("/standup")).await;
    let logs = router.logs();
    assert!(logs.contains("room=\"acme/standup\""), "{logs}");
    assert!(logs.contains("room=\"standup\""), "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reserved_paths_follow_the_affinity_cookie_and_pin_nothing() {
    let (_certs, _nodes, router) = fleet(3, "").await;
    let client = router.client_h1();
    let page = client.get(router.url("/Daily")).send().await.unwrap();
    let node = shard(&page);
    let cookie = page.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.starts_with(&format!("jitsi_router_node={node};")),
        "{cookie}"
    );
    assert!(
        cookie.contains("Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let reserved = [
        "/",
        "/config.js",
        "/interface_config.js",
        "/external_api.js",
        "/external_api.min.js",
        "/favicon.ico",
        "/manifest.json",
        "/pwa-worker.js",
        "/http-bind",
        "/http-pre-bind",
        "/xmpp-websocket",
        "/conference-request/v1",
        "/about/health",
        "/room",
        "/room-size",
        "/room-password",
        "/_unlock",
        "/static/close.html",
        "/libs/app.bundle.min.js",
        "/css/all.css",
        "/images/logo.svg",
        "/fonts/x.woff2",
        "/sounds/ring.mp3",
        "/lang/main-fr.json",
        "/.well-known/security.txt",
    ];
    for other in ["jitsi-a", "jitsi-b", "jitsi-c"] {
        for path in reserved {
            let response = client
                .get(router.url(path))
                .header("cookie", format!("theme=dark; jitsi_router_node={other}"))
                .header("x-sim-report", "1")
                .send()
                .await
                .unwrap();
            assert_eq!(shard(&response), other, "{path} with cookie for {other}");
            assert!(
                response.headers().get("set-cookie").is_none(),
                "{path} sets no cookie"
            );
        }
    }
    let without = client.get(router.url("/libs/app.js")).send().await.unwrap();
    assert_eq!(without.status(), 200, "no cookie: any node serves assets");
    let stale = client
        .get(router.url("/libs/app.js"))
        .header("cookie", "jitsi_router_node=gone")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 200, "a cookie naming no node is ignored");
    let pinned = router.logs().matches("room pinned").count();
    assert_eq!(pinned, 1, "only /Daily was pinned:\n{}", router.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn header_hygiene_and_shard_marking() {
    let (_certs, _nodes, router) = fleet(2, "").await;
    let client = router.client_h1();
    let response = client
        .get(router.url("/hygiene"))
        .header("x-sim-report", "1")
        .header("connection", "keep-alive, x-drop-me")
        .header("x-drop-me", "secret")
        .header("keep-alive", "timeout=5")
        .header("x-forwarded-for", "192.0.2.7")
        .header("x-custom", "kept")
        .send()
        .await
        .unwrap();
    assert!(response.headers().contains_key("x-jitsi-shard"));
    let seen: serde_json::Value = response.json().await.unwrap();
    let headers = &seen["headers"];
    for gone in ["connection", "x-drop-me", "keep-alive", "te"] {
        assert!(
            headers.get(gone).is_none(),
            "{gone} reached the node: {headers}"
        );
    }
    assert_eq!(headers["x-custom"][0], "kept");
    assert_eq!(
        headers["x-forwarded-for"][0], "127.0.0.1",
        "a client's own X-Forwarded-For is replaced"
    );
    assert_eq!(headers["x-real-ip"][0], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"][0], "https");
    let host = format!("localhost:{}", router.https.port());
    assert_eq!(headers["x-forwarded-host"][0], host.as_str());
    assert_eq!(
        headers["host"][0],
        host.as_str(),
        "the client's Host is kept"
    );

    let own = client
        .get(router.url("/hygiene"))
        .header("x-sim-shard", "node-says-so")
        .send()
        .await
        .unwrap();
    assert_eq!(
        shard(&own),
        "node-says-so",
        "a node's own X-Jitsi-Shard wins"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_connections_are_kept_alive_and_reused() {
    let (_certs, _nodes, router) = fleet(1, "").await;
    let client = router.client_h1();
    let mut peers = HashSet::new();
    for i in 0..20 {
        let (seen, _) = report(&client, &router.url(&format!("/pool-{}", i % 4))).await;
        peers.insert(seen["peer"].as_str().unwrap().to_owned());
    }
    assert!(
        peers.len() <= 2,
        "20 sequential requests opened {} upstream connections",
        peers.len()
    );
}

/// `pool_idle_timeout` retires idle upstream connections, and `pool_max_idle_per_node = 0`
/// keeps none.
#[tokio::test(flavor = "multi_thread")]
async fn idle_upstream_connections_are_retired_as_configured() {
    let peer = |client: reqwest::Client, url: String| async move {
        let (seen, _) = report(&client, &url).await;
        seen["peer"].as_str().unwrap().to_owned()
    };
    let (_certs, _nodes, router) = fleet(1, "[upstream]\npool_idle_timeout = \"300ms\"\n").await;
    let client = router.client_h1();
    let first = peer(client.clone(), router.url("/idle")).await;
    let again = peer(client.clone(), router.url("/idle")).await;
    assert_eq!(first, again, "a connection used a moment ago is used again");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let later = peer(client.clone(), router.url("/idle")).await;
    assert_ne!(
        first, later,
        "a connection idle past pool_idle_timeout was used again"
    );

    let (_certs, _nodes, router) = fleet(1, "[upstream]\npool_max_idle_per_node = 0\n").await;
    let client = router.client_h1();
    let mut peers = HashSet::new();
    for _ in 0..5 {
        peers.insert(peer(client.clone(), router.url("/none-kept")).await);
    }
    assert_eq!(peers.len(), 5, "no idle connection may be kept: {peers:?}");
}

/// What a [`bare_node`] does after it answers a request on a connection.
#[derive(Clone, Copy, PartialEq)]
enum AfterAnswer {
    /// Waits for the next request.
    Keep,
    /// Closes the connection 20 ms later, without having said `Connection: close` (a node whose
    /// keep-alive timer ran out).
    Close,
    /// Reads the connection's next request and closes without answering it (a node closing an
    /// idle connection just as a request arrives on it).
    DropNext,
}

/// A node on a bare socket answering each request with `ok`, then doing `after`. Counts routed
/// requests (not the router's health checks) and routed connections the router closed.
async fn bare_node(
    after: AfterAnswer,
) -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (requests, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let counts = (requests.clone(), closed.clone());
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let (requests, closed) = counts.clone();
            tokio::spawn(async move {
                let mut routed = false;
                let mut answered = false;
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                loop {
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => {
                                if routed {
                                    closed.fetch_add(1, Ordering::SeqCst);
                                }
                                return;
                            }
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let health = head.starts_with(b"GET /http-bind ");
                    let bodiless = head.starts_with(b"HEAD ");
                    head.clear();
                    if !health {
                        routed = true;
                        requests.fetch_add(1, Ordering::SeqCst);
                        if answered && after == AfterAnswer::DropNext {
                            return;
                        }
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    let answer = if bodiless {
                        &answer[..answer.len() - 2]
                    } else {
                        answer
                    };
                    if tcp.write_all(answer).await.is_err() {
                        return;
                    }
                    answered |= !health;
                    if after == AfterAnswer::Close {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        return;
                    }
                }
            });
        }
    });
    (addr, requests, closed)
}

/// A node that closes a pooled connection as a request arrives on it: an idempotent request
/// without a body is sent again on a new connection and gets its answer; a `POST` is never sent
/// twice and gets a 502.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_lost_on_a_pooled_connection_is_sent_again_only_when_safe() {
    let (addr, requests, _) = bare_node(AfterAnswer::DropNext).await;
    let certs = Certs::new();
    let entries = [("dropper", format!("http://{addr}"))];
    let router = Router::start(&certs, &config(&certs, "", &entries));
    let client = router.client_h1();
    let first = client.get(router.url("/dropped")).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(requests.load(Ordering::SeqCst), 1);
    // The pooled connection takes the GET and closes: the router sends it again on a new one.
    for (method, seen) in [(reqwest::Method::GET, 3), (reqwest::Method::HEAD, 5)] {
        let again = client
            .request(method.clone(), router.url("/dropped"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            again.status(),
            200,
            "{method} on a connection the node closed"
        );
        assert_eq!(requests.load(Ordering::SeqCst), seen, "{method}");
    }
    // A BOSH POST on the pooled connection: the node sees it once, the client gets the 502.
    let post = client
        .post(router.url("/http-bind?room=dropped"))
        .body("<body rid='1'/>")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 502);
    assert_eq!(
        requests.load(Ordering::SeqCst),
        6,
        "the POST went to the node once"
    );
    // A GET with a body is not sent twice either.
    let get = client.get(router.url("/dropped")).send().await.unwrap();
    assert_eq!(get.status(), 200, "a new connection after the 502");
    let with_body = client
        .get(router.url("/dropped"))
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(with_body.status(), 502);
    assert_eq!(requests.load(Ordering::SeqCst), 8);
}

/// A node that closes each connection after its answer: every request still gets its answer,
/// each on a new connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_closing_idle_connections_costs_no_request() {
    let (addr, requests, _) = bare_node(AfterAnswer::Close).await;
    let certs = Certs::new();
    let entries = [("closer", format!("http://{addr}"))];
    let router = Router::start(&certs, &config(&certs, "", &entries));
    let client = router.client_h1();
    for i in 0..10 {
        let answer = client
            .get(router.url(&format!("/closer-{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(
            answer.status(),
            200,
            "request {i}: {}",
            answer.text().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(requests.load(Ordering::SeqCst), 10);
}

/// An idle upstream connection is closed once `pool_idle_timeout` passes, with no request
/// coming to find it expired.
#[tokio::test(flavor = "multi_thread")]
async fn idle_upstream_connections_are_closed_after_the_timeout() {
    let (addr, requests, closed) = bare_node(AfterAnswer::Keep).await;
    let certs = Certs::new();
    let entries = [("keeper", format!("http://{addr}"))];
    let sections = "[upstream]\npool_idle_timeout = \"300ms\"\n";
    let router = Router::start(&certs, &config(&certs, sections, &entries));
    let client = router.client_h1();
    let answer = client.get(router.url("/keeper")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(requests.load(Ordering::SeqCst), 1);
    eventually(
        Duration::from_secs(5),
        "the idle connection closed",
        || async { closed.load(Ordering::SeqCst) == 1 },
    )
    .await;
}

/// A node taken out of the fleet loses its pooled connections at the next sweep (every half
/// `pool_idle_timeout`), long before they would have expired.
#[tokio::test(flavor = "multi_thread")]
async fn a_removed_node_keeps_no_pooled_connections() {
    let (gone, _, closed) = bare_node(AfterAnswer::Keep).await;
    let (stays, _, _) = bare_node(AfterAnswer::Keep).await;
    let certs = Certs::new();
    let sections = "[upstream]\npool_idle_timeout = \"6s\"\n";
    let before = [("gone", format!("http://{gone}"))];
    let router = Router::start(&certs, &config(&certs, sections, &before));
    let answer = router
        .client_h1()
        .get(router.url("/room"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let after = [("stays", format!("http://{stays}"))];
    std::fs::write(router.config_path(), config(&certs, sections, &after)).unwrap();
    router.signal("HUP");
    // Sweeps come every 3 s: the pooled connection goes at the first one after the reload,
    // where expiry alone would take it 6 to 9 s after its request.
    eventually(
        Duration::from_millis(4_500),
        "the removed node's pooled connection closed",
        || async { closed.load(Ordering::SeqCst) == 1 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_1_2_and_1_3_are_both_served() {
    let (certs, _nodes, router) = fleet(1, "").await;
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(&certs.ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(router.https).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await;
        let stream = stream.unwrap_or_else(|e| panic!("{version:?}: {e}"));
        assert_eq!(stream.get_ref().1.protocol_version(), Some(version.version));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_downstream_http1_upstream() {
    let (_certs, _nodes, router) = fleet(2, "").await;
    let response = router
        .client()
        .get(router.url("/h2room"))
        .header("x-sim-report", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let seen: serde_json::Value = response.json().await.unwrap();
    assert_eq!(seen["version"], "HTTP/1.1");
    assert_eq!(
        seen["headers"]["host"][0],
        format!("localhost:{}", router.https.port()).as_str()
    );
    let h1 = router
        .client_h1()
        .get(router.url("/h2room"))
        .send()
        .await
        .unwrap();
    assert_eq!(h1.version(), reqwest::Version::HTTP_11);
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_echo_through_the_router() {
    let (certs, _nodes, router) = fleet(3, "").await;
    let (_, node) = report(&router.client(), &router.url("/wsroom")).await;
    let (mut ws, shard) = websocket(&certs, &router, "/xmpp-websocket?room=WsRoom").await;
    assert_eq!(shard, node, "the WebSocket joined the room's node");
    for text in [
        "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>",
        "second",
    ] {
        ws.send(Message::text(text)).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
    }
    let big = vec![7u8; 200_000];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().into_data(), big);
    // Client closes: the node's close comes back and the stream ends.
    ws.close(None).await.unwrap();
    let rest: Vec<_> = tokio::time::timeout(Duration::from_secs(5), ws.collect::<Vec<_>>())
        .await
        .unwrap();
    assert!(
        rest.iter().all(|m| matches!(m, Ok(Message::Close(_)))),
        "{rest:?}"
    );

    // Node closes: the client sees the end.
    let (mut ws, _) = websocket(&certs, &router, "/xmpp-websocket?room=wsroom").await;
    ws.send(Message::text("sim:close")).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the node's close did not reach the client");
}

#[tokio::test(flavor = "multi_thread")]
async fn colibri_websockets_route_by_server_id() {
    let certs = Certs::new();
    let nodes = sim_nodes(3).await;
    let mut text = config(&certs, "", &[]);
    for (i, node) in nodes.iter().enumerate() {
        text.push_str(&format!(
            "\n[[nodes]]\nname = {:?}\nupstream = {:?}\njvb_server_ids = [\"jvb-{i}\", \"jvb-{i}-old\"]\n",
            node.name(),
            node.url()
        ));
    }
    let router = Router::start(&certs, &text);
    for (i, node) in nodes.iter().enumerate() {
        for id in [format!("jvb-{i}"), format!("jvb-{i}-old")] {
            let (mut ws, shard) = websocket(
                &certs,
                &router,
                &format!("/colibri-ws/{id}/conf42/ep7?pwd=secret"),
            )
            .await;
            assert_eq!(shard, node.name());
            ws.send(Message::text("{\"colibriClass\":\"EndpointMessage\"}"))
                .await
                .unwrap();
            assert!(ws.next().await.unwrap().unwrap().is_text());
        }
    }
    let unknown = router
        .client()
        .get(router.url("/colibri-ws/jvb-9/c/e?pwd=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert!(unknown
        .text()
        .await
        .unwrap()
        .contains("unknown videobridge server id"));
    assert!(
        !router.logs().contains("secret"),
        "pwd= values never reach the logs"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bosh_long_poll_held_20_seconds_passes() {
    let (_certs, _nodes, router) = fleet(2, "").await;
    let client = router.client_h1();
    let (_, node) = report(&client, &router.url("/http-bind?room=longpoll")).await;
    let started = Instant::now();
    let response = client
        .post(router.url("/http-bind?room=longpoll"))
        .header("x-sim-delay-ms", "20000")
        .body("<body rid='2' wait='60'/>")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(shard(&response), node);
    assert!(started.elapsed() >= Duration::from_secs(20));
    assert!(response.text().await.unwrap().contains("received='25'"));
}

#[tokio::test(flavor = "multi_thread")]
async fn https_upstreams_are_pooled_and_verified() {
    let certs = Certs::new();
    let node = SimNode::start_tls(
        "secure-1",
        "127.0.0.1:0".parse().unwrap(),
        certs.server_config(),
    )
    .await
    .unwrap();
    let upstream = format!("https://localhost:{}", node.addr().port());
    let sections = format!("[upstream]\nca = {:?}\n", certs.ca);
    let router = Router::start(
        &certs,
        &config(&certs, &sections, &[("secure-1", upstream)]),
    );
    let client = router.client();
    for i in 0..5 {
        let response = client
            .get(router.url(&format!("/tls-room-{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(shard(&response), "secure-1");
    }
    // Without the CA the router must refuse to talk to the node: 502, not a silent downgrade.
    let untrusted = Router::start(
        &certs,
        &config(
            &certs,
            "",
            &[(
                "secure-1",
                format!("https://localhost:{}", node.addr().port()),
            )],
        ),
    );
    let response = untrusted
        .client()
        .get(untrusted.url("/tls-room"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
}

#[tokio::test(flavor = "multi_thread")]
async fn redirect_mode_sends_307_to_the_pinned_node() {
    let certs = Certs::new();
    let mut text = config(&certs, "[routing]\nmode = \"redirect\"\n", &[]);
    for name in ["jitsi-a", "jitsi-b", "jitsi-c"] {
        text.push_str(&format!(
            "\n[[nodes]]\nname = \"{name}\"\nupstream = \"http://127.0.0.1:1\"\npublic_url = \"https://{name}.meet.example.com/\"\n"
        ));
    }
    let router = Router::start(&certs, &text);
    let client = router.client();
    let first = client
        .get(router.url("/MyRoom?lang=de"))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 307);
    assert_eq!(first.headers()["cache-control"], "no-store");
    let location = first.headers()["location"].to_str().unwrap().to_owned();
    let node = shard(&first);
    assert_eq!(
        location,
        format!("https://{node}.meet.example.com/MyRoom?lang=de")
    );
    for form in [
        "/myroom",
        "/http-bind?room=myroom",
        "/xmpp-websocket?room=MYROOM",
    ] {
        let again = client.get(router.url(form)).send().await.unwrap();
        assert_eq!(again.status(), 307);
        assert_eq!(
            again.headers()["location"],
            format!("https://{node}.meet.example.com{form}").as_str()
        );
    }
    let root = client.get(router.url("/")).send().await.unwrap();
    assert_eq!(root.status(), 307);
    assert!(root.headers()["location"]
        .to_str()
        .unwrap()
        .ends_with(".meet.example.com/"));
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_listener_redirects_to_https() {
    let certs = Certs::new();
    let nodes = sim_nodes(1).await;
    let text = config(&certs, "", &node_entries(&nodes)).replacen(
        "[server]\n",
        "[server]\nhttp_listen = \"127.0.0.1:0\"\n",
        1,
    );
    let router = Router::start(&certs, &text);
    let http = router.http.expect("http listener");
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://localhost:{}/MyRoom?x=1", http.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 308);
    assert_eq!(
        response.headers()["location"],
        format!("https://localhost:{}/MyRoom?x=1", router.https.port()).as_str()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_requests_and_tunnels_finish_then_exits_0() {
    let (certs, _nodes, mut router) = fleet(1, "").await;
    let client = router.client_h1();
    let url = router.url("/http-bind?room=goodbye");
    let poll = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .post(url)
                .header("x-sim-delay-ms", "2000")
                .body("<body/>")
                .send()
                .await
        }
    });
    let (mut ws, _) = websocket(&certs, &router, "/xmpp-websocket?room=goodbye").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    router.signal("TERM");

    let https = router.https;
    eventually(
        Duration::from_secs(5),
        "the listener to close",
        || async move { tokio::net::TcpStream::connect(https).await.is_err() },
    )
    .await;
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("still here")
    );
    let response = poll.await.unwrap().unwrap();
    assert_eq!(response.status(), 200, "the long-poll in flight finished");
    assert!(
        router.is_running(),
        "an open tunnel keeps the router up within the grace period"
    );

    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    drop(ws); // the client hangs up after the close handshake, as browsers do
    assert_eq!(router.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(
        router.logs().contains("all connections closed"),
        "{}",
        router.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_stops_at_once() {
    let (certs, _nodes, mut router) = fleet(1, "").await;
    let (_ws, _) = websocket(&certs, &router, "/xmpp-websocket?room=stuck").await;
    router.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        router.is_running(),
        "the open tunnel holds the first shutdown"
    );
    router.signal("INT");
    assert_eq!(router.wait_exit(Duration::from_secs(5)), Some(0));
    assert!(router.logs().contains("second signal"), "{}", router.logs());
}
