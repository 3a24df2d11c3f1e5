//! The router binary in proxy and redirect mode against simulated Jitsi nodes.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use support::*;
use tokio_tungstenite::tungstenite::Message;

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
        "/_api/room-info?room=TeamSync",
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

/// `/room` and `/about` are endpoints of a node's prosody and jicofo below them or with `room=`,
/// `/images/` a folder of assets and `/node.js` a script's name, but jitsi-meet's nginx serves
/// each name alone, when it is no file, as a meeting's page, and so does the router (for a
/// name like a file, when a browser opens it as a page).
#[tokio::test(flavor = "multi_thread")]
async fn a_meeting_named_like_an_endpoint_or_a_file_has_its_page_on_its_node() {
    let (_certs, _nodes, router) = fleet(3, "").await;
    let client = router.client_h1();
    let opened = [("sec-fetch-dest", "document")];
    let typed = [("accept", "text/html,application/xhtml+xml,*/*;q=0.8")];
    let plain: [(&str, &str); 0] = [];
    let names: [(&str, &[(&str, &str)]); 5] = [
        ("room", &plain),
        ("about", &plain),
        ("images", &plain),
        ("node.js", &opened),
        ("notes.txt", &typed),
    ];
    for (name, fields) in names {
        let mut get = client.get(router.url(&format!("/{name}")));
        for (field, value) in fields {
            get = get.header(*field, *value);
        }
        let page = get.send().await.unwrap();
        let node = shard(&page);
        let cookie = page
            .headers()
            .get("set-cookie")
            .map(|c| c.to_str().unwrap());
        let expected = format!("jitsi_router_node={node};");
        assert!(
            cookie.is_some_and(|c| c.starts_with(&expected)),
            "{name}: {cookie:?}"
        );
        let pin = router.admin_json(&format!("/api/rooms/{name}")).await;
        assert_eq!(pin["node"], node.as_str(), "{name}: {pin}");
        let (_, bosh_node) = report(&client, &router.url(&format!("/http-bind?room={name}"))).await;
        assert_eq!(bosh_node, node, "{name}");
    }
    // Fetched by a page's script, such a name is a file of the page's node, and no meeting.
    let script = client
        .get(router.url("/logging_config.js"))
        .header("sec-fetch-dest", "script")
        .send()
        .await
        .unwrap();
    assert!(script.headers().get("set-cookie").is_none());
    let listed = reqwest::get(router.admin_url("/api/rooms/logging_config.js")).await;
    assert_eq!(listed.unwrap().status(), 404);
    // mod_muc_size's answer about another room comes from that room's node.
    let standup = shard(&client.get(router.url("/standup")).send().await.unwrap());
    let (_, size_node) = report(
        &client,
        &router.url("/room-size?room=standup&domain=meet.jitsi"),
    )
    .await;
    assert_eq!(size_node, standup);
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
        "/_unlock",
        "/static/close.html",
        "/libs/app.bundle.min.js",
        "/css/all.css",
        "/images/logo.svg",
        "/fonts/x.woff2",
        "/sounds/ring.mp3",
        "/lang/main-fr.json",
        "/.well-known/security.txt",
        "/_api/room-info",
        "/_api/public/logo.png",
        "/rtcstats-ws/",
        "/_load-test/libs/load-test-participant.min.js",
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
    // Only a room page's HTML sets the cookie: not a WebSocket on a room's path, nor an
    // answer that is no page.
    let upgrade = client
        .get(router.url("/standup"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(upgrade.status(), 101);
    assert!(upgrade.headers().get("set-cookie").is_none(), "a WebSocket");
    let plain = client
        .get(router.url("/metrics-room"))
        .header("x-sim-report", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 200);
    assert!(!plain.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("html"));
    assert!(plain.headers().get("set-cookie").is_none(), "no HTML");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_etherpad_pad_meets_on_one_node_whatever_the_cookie() {
    // docker-jitsi-meet's web front sends `/etherpad/` to the node's Etherpad, which keeps each
    // pad to itself: a meeting's shared document is `/etherpad/p/<pad>`, whose socket.io
    // connection names the pad in `padId=`.
    let (_certs, _nodes, router) = fleet(3, "").await;
    let client = router.client_h1();
    let mut nodes = HashSet::new();
    for i in 0..12 {
        let page = (client.get(router.url(&format!("/etherpad/p/Notes-{i}"))))
            .header("cookie", "jitsi_router_node=jitsi-a")
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        assert!(page.headers().get("set-cookie").is_none(), "no room page");
        let node = shard(&page);
        let socket = format!("/etherpad/socket.io/?padId=Notes-{i}&EIO=4&transport=polling");
        for cookie in ["jitsi-a", "jitsi-b", "jitsi-c"] {
            let polled = (client.get(router.url(&socket)))
                .header("cookie", format!("jitsi_router_node={cookie}"))
                .send()
                .await
                .unwrap();
            assert_eq!(
                shard(&polled),
                node,
                "notes-{i}: its socket.io, cookie {cookie}"
            );
        }
        let style = (client.get(router.url("/etherpad/static/css/pad.css")))
            .header("referer", router.url(&format!("/etherpad/p/Notes-{i}")))
            .header("cookie", "jitsi_router_node=jitsi-c")
            .send()
            .await
            .unwrap();
        assert_eq!(shard(&style), node, "notes-{i}: a file its page loaded");
        nodes.insert(node);
    }
    assert!(nodes.len() > 1, "every pad on {nodes:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_load_test_client_meets_its_room_on_the_rooms_node() {
    // docker-jitsi-meet serves jitsi-meet's load-test client at `/_load-test/<room>`: a page
    // that joins `<room>` over `/xmpp-websocket?room=<room>`, and whose bridge channels follow
    // the affinity cookie its page sets.
    let (_certs, _nodes, router) = fleet(3, "").await;
    let client = router.client_h1();
    let mut nodes = HashSet::new();
    for i in 0..6 {
        let page = (client.get(router.url(&format!("/_load-test/Load{i}"))))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        let node = shard(&page);
        let cookie = page.headers()["set-cookie"].to_str().unwrap();
        assert!(
            cookie.starts_with(&format!("jitsi_router_node={node};")),
            "{cookie}"
        );
        let signalling = (client.get(router.url(&format!("/xmpp-websocket?room=load{i}"))))
            .send()
            .await
            .unwrap();
        assert_eq!(shard(&signalling), node, "load{i}: page and signalling");
        let script = (client.get(router.url("/_load-test/libs/load-test-participant.min.js")))
            .header("cookie", format!("jitsi_router_node={node}"))
            .send()
            .await
            .unwrap();
        assert_eq!(shard(&script), node, "its script follows the cookie");
        nodes.insert(node);
    }
    assert!(nodes.len() > 1, "every room on {nodes:?}");
    let pins: serde_json::Value = router.admin_json("/api/rooms").await;
    assert_eq!(pins["total"], 6, "one pin per room: {pins}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_whiteboard_is_pinned_by_its_board_and_leaves_the_affinity_cookie_alone() {
    let (certs, _nodes, router) = fleet(3, "").await;
    let client = router.client_h1();
    // jitsi-meet's whiteboard: socket.io to `collabServerBaseUrl` (docker-jitsi-meet's own
    // host) with `room=` an md5 of the meeting's URL, the same for every participant.
    let board =
        |room: &str| router.url(&format!("/socket.io/?EIO=4&transport=polling&room={room}"));
    let first = client.get(board("0cc175b9c0f1b6a8")).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("set-cookie").is_none(), "no page");
    let node = shard(&first);
    for other in ["jitsi-a", "jitsi-b", "jitsi-c"] {
        let again = client
            .get(board("0cc175b9c0f1b6a8"))
            .header("cookie", format!("jitsi_router_node={other}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            shard(&again),
            node,
            "a board meets on one node, whatever the cookie"
        );
    }
    let pin: serde_json::Value = router.admin_json("/api/rooms/0cc175b9c0f1b6a8").await;
    assert_eq!(pin["node"], node.as_str(), "{pin}");
    // Boards are rooms of their own, spread like rooms, not all on one node.
    let mut nodes = HashSet::new();
    for i in 0..12 {
        nodes.insert(shard(
            &client.get(board(&format!("b{i}"))).send().await.unwrap(),
        ));
    }
    assert!(nodes.len() > 1, "every board on {nodes:?}");
    // A board's WebSocket is nobody joining; a signalling WebSocket is.
    let joined = || async {
        let nodes: serde_json::Value = router.admin_json("/api/nodes").await;
        let counts = nodes.as_array().unwrap().iter();
        counts
            .map(|n| n["joined_since_reading"].as_u64().unwrap())
            .sum::<u64>()
    };
    let (mut ws, to) = websocket(
        &certs,
        &router,
        "/socket.io/?EIO=4&transport=websocket&room=0cc175b9c0f1b6a8",
    )
    .await;
    assert_eq!(to, node);
    echoes(&mut ws, "draw").await;
    assert_eq!(joined().await, 0);
    let (mut ws, _) = websocket(&certs, &router, "/xmpp-websocket?room=drawing").await;
    echoes(&mut ws, "<open/>").await;
    assert_eq!(joined().await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn assets_follow_the_page_that_loaded_them() {
    let (_certs, _nodes, router) = fleet(3, "").await;
    let h1 = router.client_h1();
    // Two rooms on two nodes.
    let first = shard(&h1.get(router.url("/room-0")).send().await.unwrap());
    let mut other = None;
    for i in 1..50 {
        let node = shard(
            &h1.get(router.url(&format!("/room-{i}")))
                .send()
                .await
                .unwrap(),
        );
        if node != first {
            other = Some((i, node));
            break;
        }
    }
    let (i, second) = other.expect("rooms on two nodes");
    let pinned = router.logs().matches("room pinned").count();
    let cookie = format!("jitsi_router_node={second}");
    // A page in another site's iframe gets no cookie, or the cookie of another tab's room: its
    // assets name their page in `Referer`, over HTTP/1.1 (Host) and HTTP/2 (:authority) alike.
    for client in [&h1, &router.client()] {
        for (referer, with_cookie, want) in [
            (router.url("/Room-0"), false, &first),
            (router.url("/Room-0"), true, &first),
            (router.url(&format!("/room-{i}")), false, &second),
            (router.url("/http-bind?room=room-0"), true, &first),
            // Another host's page, or a room nobody opened: the cookie decides, nothing is pinned.
            ("https://example.org/room-0".to_owned(), true, &second),
            (router.url("/never-opened"), true, &second),
        ] {
            let mut request = client
                .get(router.url("/libs/app.bundle.min.js?v=1"))
                .header("referer", &referer);
            if with_cookie {
                request = request.header("cookie", &cookie);
            }
            let response = request.send().await.unwrap();
            assert_eq!(&shard(&response), want, "{referer} cookie {with_cookie}");
        }
    }
    assert_eq!(
        router.logs().matches("room pinned").count(),
        pinned,
        "a Referer pins nothing:\n{}",
        router.logs()
    );
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

/// A client that offers ALPN `http/1.0` alone (`curl --http1.0`, old monitoring probes) is
/// served, as nginx serves it, rather than refused in the handshake.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_offering_alpn_http_1_0_is_served() {
    use tokio::io::AsyncWriteExt;
    let (certs, _nodes, router) = fleet(1, "").await;
    let mut tls = certs.connect(router.https, b"http/1.0").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.0"[..]));
    tls.write_all(b"GET /standup HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (got, closed) = read_until_closed(&mut tls, Duration::from_secs(10)).await;
    let answer = String::from_utf8_lossy(&got);
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
    assert!(
        answer.to_ascii_lowercase().contains("x-jitsi-shard: "),
        "{answer}"
    );
    assert!(
        closed,
        "an HTTP/1.0 answer without keep-alive ends with the connection"
    );
}

/// A TLS handshake to `addr` with `client`, then one request read to its end (so that the
/// session tickets the router sends after the handshake are taken); the kind of handshake.
async fn handshake(
    client: &std::sync::Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
) -> rustls::HandshakeKind {
    use tokio::io::AsyncWriteExt;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(client.clone())
        .connect(name, tcp)
        .await
        .unwrap();
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    let request = b"GET /standup HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    tls.write_all(request).await.unwrap();
    let (got, _) = read_until_closed(&mut tls, Duration::from_secs(10)).await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    kind
}

/// A browser's later connections resume the TLS session of its first, also after many other
/// clients' handshakes in between (`limits.tls_sessions`, 20,000 by default; rustls's own
/// cache holds 256 sessions, two for each handshake); with `tls_sessions = 0` none is resumed.
#[tokio::test(flavor = "multi_thread")]
async fn tls_sessions_resume_after_many_other_clients_handshakes() {
    use rustls::HandshakeKind::{Full, Resumed};
    for (sections, resumed) in [("", true), ("[limits]\ntls_sessions = 0\n", false)] {
        let (certs, _nodes, router) = fleet(1, sections).await;
        let browser = certs.client_config_alpn(b"http/1.1");
        assert_eq!(handshake(&browser, router.https).await, Full);
        let others: Vec<_> = (0..4)
            .map(|_| {
                let certs_ca = certs.client_config_alpn(b"http/1.1");
                let https = router.https;
                tokio::spawn(async move {
                    for _ in 0..100 {
                        // A client of its own each time: a full handshake.
                        let mut fresh = (*certs_ca).clone();
                        fresh.resumption = rustls::client::Resumption::disabled();
                        assert_eq!(handshake(&std::sync::Arc::new(fresh), https).await, Full);
                    }
                })
            })
            .collect();
        for other in others {
            other.await.unwrap();
        }
        let expected = if resumed { Resumed } else { Full };
        assert_eq!(
            handshake(&browser, router.https).await,
            expected,
            "{sections}"
        );
        // The router counts what it did (limits.tls_sessions is sized by this).
        let counted = metrics(&router).await;
        let kind =
            |kind: &str| counted[&format!("jitsi_router_tls_handshakes_total{{kind=\"{kind}\"}}")];
        assert_eq!(kind("resumed"), f64::from(u8::from(resumed)), "{sections}");
        assert!(kind("full") >= 401.0, "{counted:?}");
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
async fn signalling_websockets_count_as_participants_joining_their_node() {
    let (certs, _nodes, router) = fleet(3, "").await;
    let (_, node) = report(&router.client(), &router.url("/joinroom")).await;
    let joined = || async {
        let nodes: serde_json::Value = router.admin_json("/api/nodes").await;
        (nodes.as_array().unwrap().iter())
            .map(|n| {
                (
                    n["name"].as_str().unwrap().to_owned(),
                    n["joined_since_reading"].as_u64().unwrap(),
                )
            })
            .collect::<std::collections::HashMap<_, _>>()
    };
    // The room page is not a participant joining.
    assert!(joined().await.values().all(|&n| n == 0));
    let mut open = Vec::new();
    for _ in 0..2 {
        let (ws, shard) = websocket(&certs, &router, "/xmpp-websocket?room=JoinRoom").await;
        assert_eq!(shard, node);
        open.push(ws);
    }
    let counts = joined().await;
    for (name, count) in &counts {
        assert_eq!(*count, if *name == node { 2 } else { 0 }, "{counts:?}");
    }
    // A room's other WebSockets (here a path-form room's, as the whiteboard's `/socket.io/`)
    // are no participant's signalling.
    let (_ws, _) = websocket(&certs, &router, "/joinroom").await;
    assert_eq!(joined().await, counts);
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

/// `n` simulated nodes behind a router that offers WebSockets over HTTP/2 (RFC 8441).
async fn h2_websocket_fleet(n: usize, sections: &str) -> (Certs, Vec<SimNode>, Router) {
    let certs = Certs::new();
    let nodes = sim_nodes(n).await;
    let text = config(&certs, sections, &node_entries(&nodes))
        .replace("[server]\n", "[server]\nwebsockets_over_http2 = true\n");
    let router = Router::start(&certs, &text);
    (certs, nodes, router)
}

/// An HTTP/2 connection to the router, and the task driving it.
async fn h2_connection(
    certs: &Certs,
    router: &Router,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let tcp = tokio::net::TcpStream::connect(router.https).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(certs.client_config_alpn(b"h2"));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(tls);
    let (sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

/// Sends a request on an HTTP/2 connection to the router: `CONNECT` with `:protocol`
/// `websocket` (RFC 8441) when `websocket`, else `GET`.
async fn h2_request(
    sender: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    router: &Router,
    path: &str,
    websocket: bool,
) -> hyper::Result<http::Response<hyper::body::Incoming>> {
    let mut request = http::Request::builder()
        .uri(format!("https://localhost:{}{path}", router.https.port()))
        .header("sec-websocket-version", "13");
    if websocket {
        request = (request.method(http::Method::CONNECT))
            .extension(hyper::ext::Protocol::from_static("websocket"));
    }
    let request = request.body(http_body_util::Empty::new()).unwrap();
    sender.ready().await?;
    sender.send_request(request).await
}

/// A WebSocket client over an HTTP/2 stream the router answered `200`.
type H2Ws = tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

/// A WebSocket over `h2` (RFC 8441) to `path`, and the node that answered.
async fn h2_websocket(
    h2: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    router: &Router,
    path: &str,
) -> (H2Ws, String) {
    let mut answer = h2_request(h2, router, path, true).await.unwrap();
    assert_eq!(answer.status(), 200, "{path}");
    assert!(answer.headers().get("sec-websocket-accept").is_none());
    let node = h2_shard(&answer);
    let upgraded = hyper::upgrade::on(&mut answer).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(upgraded);
    let role = tokio_tungstenite::tungstenite::protocol::Role::Client;
    let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(io, role, None).await;
    (ws, node)
}

/// The node an HTTP/2 answer names.
fn h2_shard<B>(response: &http::Response<B>) -> String {
    response.headers()["x-jitsi-shard"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn websockets_over_http2_reach_their_rooms_node_and_hold_their_connection() {
    // A keep-alive timeout far shorter than a meeting: open tunnels must keep their connection.
    let limits = "[limits]\nkeepalive_timeout = \"1s\"\n";
    let (certs, _nodes, router) = h2_websocket_fleet(3, limits).await;
    let mut h2 = h2_connection(&certs, &router).await;
    // The page first, on the same connection (the router's SETTINGS arrive meanwhile).
    let page = h2_request(&mut h2, &router, "/Standup", false)
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let node = h2_shard(&page);
    let mut sockets = Vec::new();
    for room in ["standup", "retro"] {
        let path = format!("/xmpp-websocket?room={room}");
        let (ws, to) = h2_websocket(&mut h2, &router, &path).await;
        if room == "standup" {
            assert_eq!(to, node, "the room page's node");
        }
        sockets.push(ws);
    }
    for ws in &mut sockets {
        ws.send(Message::text("<open/>")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("<open/>"));
    }
    // Both count as participants joining.
    let nodes: serde_json::Value = router.admin_json("/api/nodes").await;
    let joined: u64 = (nodes.as_array().unwrap().iter())
        .map(|n| n["joined_since_reading"].as_u64().unwrap())
        .sum();
    assert_eq!(joined, 2, "{nodes}");
    // Past the keep-alive timeout the connection is still in use: it takes new streams and
    // the tunnels carry on.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let again = h2_request(&mut h2, &router, "/Standup", false).await;
    assert_eq!(again.expect("the connection is open").status(), 200);
    for ws in &mut sockets {
        ws.send(Message::text("<iq/>")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("<iq/>"));
    }
    // Not offered unless configured.
    let (plain_certs, _plain_nodes, plain_router) = fleet(1, "").await;
    let mut plain_h2 = h2_connection(&plain_certs, &plain_router).await;
    let page = h2_request(&mut plain_h2, &plain_router, "/Standup", false).await;
    assert_eq!(page.unwrap().status(), 200);
    let path = "/xmpp-websocket?room=standup";
    let refused = h2_request(&mut plain_h2, &plain_router, path, true).await;
    assert!(refused.is_err(), "{:?}", refused.map(|r| r.status()));
    // A plain CONNECT is still refused.
    let mut plain = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("localhost:{}", router.https.port()))
        .body(http_body_util::Empty::new())
        .unwrap();
    plain.headers_mut().clear();
    let refused = h2.send_request(plain).await.unwrap();
    assert_eq!(refused.status(), 405);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_over_http2_counts_as_a_connection_for_the_caps() {
    // Like a WebSocket on a connection of its own, each holds a connection to a node.
    let limits = "[limits]\nmax_connections_per_client = 2\n";
    let (certs, _nodes, router) = h2_websocket_fleet(2, limits).await;
    let mut h2 = h2_connection(&certs, &router).await;
    let page = h2_request(&mut h2, &router, "/standup", false)
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let path = "/xmpp-websocket?room=standup";
    let mut first = h2_request(&mut h2, &router, path, true).await.unwrap();
    assert_eq!(first.status(), 200, "the connection and one WebSocket");
    let over = h2_request(&mut h2, &router, path, true).await.unwrap();
    assert_eq!(over.status(), 429);
    let reason = http_body_util::BodyExt::collect(over.into_body())
        .await
        .unwrap()
        .to_bytes();
    let reason = String::from_utf8_lossy(&reason).into_owned();
    assert!(reason.contains("max_connections_per_client"), "{reason}");
    assert_eq!(
        metrics(&router).await["jitsi_router_limited_total{limit=\"max_connections_per_client\"}"],
        1.0
    );
    // The first one closes: its place is free again.
    let upgraded = hyper::upgrade::on(&mut first).await.unwrap();
    drop(upgraded);
    eventually(
        Duration::from_secs(10),
        "a WebSocket once one closed",
        || {
            let mut h2 = h2.clone();
            let router = &router;
            async move {
                let answer = h2_request(&mut h2, router, path, true).await.unwrap();
                answer.status() == 200
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_over_http2_whose_client_stops_reading_is_closed() {
    // The connection reads on, so its socket never stalls; the stream takes nothing (flow
    // control) while the node echoes everything the client sends.
    let limits = "[limits]\nsend_timeout = \"1s\"\n";
    let (certs, _nodes, router) = h2_websocket_fleet(1, limits).await;
    let mut h2 = h2_connection(&certs, &router).await;
    let (ws, _) = h2_websocket(&mut h2, &router, "/xmpp-websocket?room=standup").await;
    let (mut sink, _never_read) = ws.split();
    let sending = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..1_000 {
            if sink.send(Message::binary(chunk.clone())).await.is_err() {
                return true;
            }
        }
        false
    });
    eventually(Duration::from_secs(20), "the send timeout", || async {
        metric(&router, "jitsi_router_timeouts_total{state=\"send\"}").await >= 1.0
    })
    .await;
    eventually(Duration::from_secs(10), "the tunnel closed", || async {
        metric(&router, "jitsi_router_websocket_tunnels").await == 0.0
    })
    .await;
    let cut = tokio::time::timeout(Duration::from_secs(10), sending).await;
    assert!(
        cut.expect("the client's writes end").unwrap(),
        "64 MiB went through"
    );
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

    // An id no node declares (docker-jitsi-meet's default: the bridge container's address, alike
    // on every host) goes where the browser's room page went, named by its affinity cookie.
    let bridge = "/colibri-ws/172.18.0.5/conf42/ep7?pwd=secret";
    let mut reached = HashSet::new();
    for room in ["bridge-room-1", "bridge-room-2", "bridge-room-3"] {
        let page = router
            .client()
            .get(router.url(&format!("/{room}")))
            .send()
            .await
            .unwrap();
        let cookie = page.headers()["set-cookie"].to_str().unwrap();
        let cookie = cookie.split(';').next().unwrap().to_owned();
        let (node, _) = (shard(&page), page.bytes().await);
        let routed = (router.client().get(router.url(bridge)))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(routed.status(), 200, "{room}");
        assert_eq!(shard(&routed), node, "{room}");
        reached.insert(node);
    }
    assert_eq!(
        reached.len(),
        3,
        "the rooms spread over the nodes: {reached:?}"
    );
    // Without the cookie, or with one naming no node, there is nowhere to send it.
    for cookie in ["", "jitsi_router_node=jitsi-z"] {
        let refused = (router.client().get(router.url(bridge)))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 404, "{cookie:?}");
    }
    log_shows(&router, "no node declares").await;
    assert!(
        !router.logs().contains("secret"),
        "pwd= values never reach the logs"
    );
}

/// What lib-jitsi-meet does with the URL its bridge advertises, for an id no node declares:
/// open it and talk. `echo: ping` when routed, `failed` when not.
const BRIDGE_CHANNEL: &str = "new Promise(done => {
    const ws = new WebSocket('wss://' + location.host + '/colibri-ws/172.18.0.5/conf/ep?pwd=x');
    ws.onopen = () => ws.send('ping');
    ws.onmessage = m => { done('echo: ' + m.data); ws.close(); };
    ws.onerror = () => done('failed');
})";

/// Waits for the room page in `context` (the tab's page with `None`) to have signalled, and for
/// its signalling WebSocket, which echoes once and closes, to be gone: from then on only the
/// affinity cookie can tell the router where this browser's conference is.
async fn signalled_and_closed(
    tab: &mut support::browser::Tab,
    context: Option<u64>,
    router: &Router,
) {
    let log = "document.getElementById('log').textContent.includes('echoed')";
    tab.wait_for_in(context, log, Duration::from_secs(10)).await;
    eventually(
        Duration::from_secs(5),
        "the page's WebSocket to close",
        || async { metrics(router).await["jitsi_router_websocket_tunnels"] == 0.0 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_sends_the_affinity_cookie_with_its_bridge_channel() {
    let (_certs, _nodes, router) = fleet(3, "").await;
    let browser = support::browser::Browser::launch(&["--ignore-certificate-errors"]).await;
    let mut tab = browser.tab().await;
    tab.goto(&router.url("/CookieRoom")).await;
    signalled_and_closed(&mut tab, None, &router).await;
    assert_eq!(tab.eval(BRIDGE_CHANNEL).await, "echo: ping");
    // Without the cookie the same channel has nowhere to go.
    tab.call("Network.clearBrowserCookies", serde_json::json!({}))
        .await;
    assert_eq!(tab.eval(BRIDGE_CHANNEL).await, "failed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_opens_its_websockets_over_http2_when_offered() {
    let (_certs, _nodes, router) = h2_websocket_fleet(3, "").await;
    let browser = support::browser::Browser::launch(&["--ignore-certificate-errors"]).await;
    let mut tab = browser.tab().await;
    tab.goto(&router.url("/H2Room")).await;
    signalled_and_closed(&mut tab, None, &router).await;
    assert_eq!(tab.eval(BRIDGE_CHANNEL).await, "echo: ping");
    let logs = router.logs();
    for path in ["/xmpp-websocket", "/colibri-ws/"] {
        let over_h2 = format!("method=CONNECT path={path}");
        assert!(logs.contains(&over_h2), "no {over_h2:?}:\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_room_in_another_sites_iframe_keeps_its_affinity_cookie() {
    // The iframe API: a page of another site (here plain http on 127.0.0.1, the router being
    // https on localhost) embeds the room with the deployment's `external_api.js`, loaded
    // through the router. The browser stores and sends the cookie only if it may live in a
    // third-party frame.
    let (_certs, nodes, router) = fleet(3, "").await;
    let mut flags = vec!["--ignore-certificate-errors"];
    flags.extend(support::browser::SAME_PROCESS_FRAMES);
    let browser = support::browser::Browser::launch(&flags).await;
    let mut tab = browser.tab().await;
    tab.goto(&format!("{}/embedder", nodes[0].url())).await;
    let room = router.url("/IframeRoom");
    let (script, domain) = (
        router.url("/external_api.js"),
        format!("localhost:{}", router.https.port()),
    );
    let embed = format!(
        "new Promise((done, failed) => {{
            const script = document.createElement('script');
            script.onerror = () => failed('external_api.js did not load');
            script.onload = () => {{
                const api = new JitsiMeetExternalAPI({domain:?}, {{
                    roomName: 'IframeRoom',
                    parentNode: document.body,
                    configOverwrite: {{ startWithAudioMuted: true }},
                }});
                api.getIFrame().onload = () => done(api.getIFrame().src);
            }};
            script.src = {script:?};
            document.head.appendChild(script);
        }})"
    );
    let src = tab.eval(&embed).await;
    assert_eq!(
        src,
        format!("{room}#jitsi_meet_external_api_id=0&config.startWithAudioMuted=true")
    );
    let frame = Some(tab.frame_context(&room).await);
    signalled_and_closed(&mut tab, frame, &router).await;
    assert_eq!(tab.eval_in(frame, BRIDGE_CHANNEL).await, "echo: ping");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_undeclared_bridge_id_follows_the_clients_open_signalling() {
    // A mobile app or a page in another site's iframe: no affinity cookie, but its signalling
    // WebSocket is open to its room's node while it is in the conference.
    let (certs, _nodes, router) = fleet(3, "").await;
    let bridge = "/colibri-ws/172.18.0.5/conf42/ep7?pwd=x";
    let status = |path: &'static str| {
        let request = router.client().get(router.url(path)).send();
        async move { request.await.unwrap() }
    };
    assert_eq!(status(bridge).await.status(), 404, "no signalling yet");
    // A whiteboard's WebSocket is routed as a room named `socket.io`, and is no signalling.
    let (mut whiteboard, _) =
        websocket(&certs, &router, "/socket.io/?roomId=w1&transport=websocket").await;
    echoes(&mut whiteboard, "draw").await;
    assert_eq!(
        status(bridge).await.status(),
        404,
        "a whiteboard is no signalling"
    );
    let (mut signalling, node) = websocket(&certs, &router, "/xmpp-websocket?room=app-room").await;
    echoes(&mut signalling, "<open/>").await;
    let routed = status(bridge).await;
    assert_eq!(routed.status(), 200);
    assert_eq!(shard(&routed), node);
    // Signalling to a second node from the same address (two rooms, or two people behind one
    // NAT): the router cannot tell which, and does not guess.
    let mut other = None;
    for i in 0..10 {
        let (ws, to) = websocket(&certs, &router, &format!("/xmpp-websocket?room=other-{i}")).await;
        if to != node {
            other = Some(ws);
            break;
        }
    }
    let mut other = other.expect("a room on another node");
    assert_eq!(
        status(bridge).await.status(),
        404,
        "signalling to two nodes"
    );
    other.close(None).await.unwrap();
    drop(other);
    eventually(
        Duration::from_secs(5),
        "the other signalling to end",
        || async { status(bridge).await.status() == 200 },
    )
    .await;
    signalling.close(None).await.unwrap();
    drop(signalling);
    eventually(Duration::from_secs(5), "the signalling to end", || async {
        status(bridge).await.status() == 404
    })
    .await;
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

/// A certificate made as a docker-jitsi-meet web container makes its own when it has no other
/// (`openssl req -new -x509 -subj "/C=US/ST=TX/L=Austin/O=jitsi.org/OU=Jitsi Server/CN=*"`):
/// self-signed, subject `CN=*`, no subject alternative name, marked as a CA. Written as PEM to
/// `dir/<name>.crt`; returns that path and a server config presenting it.
fn docker_jitsi_meet_certificate(
    dir: &std::path::Path,
    name: &str,
) -> (std::path::PathBuf, std::sync::Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    for (kind, value) in [
        (DnType::CountryName, "US"),
        (DnType::StateOrProvinceName, "TX"),
        (DnType::LocalityName, "Austin"),
        (DnType::OrganizationName, "jitsi.org"),
        (DnType::OrganizationalUnitName, "Jitsi Server"),
        (DnType::CommonName, "*"),
    ] {
        params.distinguished_name.push(kind, value);
    }
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let path = dir.join(format!("{name}.crt"));
    std::fs::write(&path, cert.pem()).unwrap();
    let der = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes());
    let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], der.unwrap())
    .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (path, std::sync::Arc::new(config))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nodes_own_self_signed_certificate_is_trusted_once_upstream_ca_lists_it() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let (listed, tls) = docker_jitsi_meet_certificate(dir.path(), "node");
    let node = SimNode::start_tls("docker-1", "127.0.0.1:0".parse().unwrap(), tls)
        .await
        .unwrap();
    // The same kind of certificate with another key: what anyone can make.
    let (_, impostor_tls) = docker_jitsi_meet_certificate(dir.path(), "impostor");
    let impostor = SimNode::start_tls("impostor", "127.0.0.1:0".parse().unwrap(), impostor_tls)
        .await
        .unwrap();
    let nodes = |node: &SimNode, name: &'static str| {
        vec![(name, format!("https://127.0.0.1:{}", node.addr().port()))]
    };
    let routed = |router: &Router, room: &str| {
        let request = router.client().get(router.url(&format!("/{room}"))).send();
        async move { request.await.unwrap() }
    };

    // Health checks every 200 ms, one failure enough to mark a node down.
    let health = "[health]\ninterval = \"200ms\"\nfall = 1\nrise = 1\n";
    let listing = format!("{health}[upstream]\nca = {listed:?}\n");
    let trusting = Router::start(&certs, &config(&certs, &listing, &nodes(&node, "docker-1")));
    let response = routed(&trusting, "listed-room").await;
    assert_eq!(response.status(), 200);
    assert_eq!(shard(&response), "docker-1");
    // Health checks go through the same trust: after several, the node is still healthy.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = trusting.admin_json("/api/nodes").await;
    assert_eq!(status[0]["healthy"], true, "{status}");

    // Unlisted, the node's certificate names nothing and is trusted by no one: its health
    // checks fail on it, and no request reaches it (502, or 503 once it is marked down).
    let refused = |router: Router, node: &'static str| async move {
        let status = routed(&router, &format!("{node}-room")).await.status();
        assert!(status == 502 || status == 503, "{node}: {status}");
        eventually(
            Duration::from_secs(5),
            "the node to fail its checks",
            || async { router.admin_json("/api/nodes").await[0]["healthy"] == false },
        )
        .await;
        log_shows(&router, "certificate").await;
    };
    let unlisted = Router::start(&certs, &config(&certs, health, &nodes(&node, "docker-1")));
    refused(unlisted, "docker-1").await;
    // Listing one certificate trusts that one only, not another made the same way.
    let fooled = Router::start(
        &certs,
        &config(&certs, &listing, &nodes(&impostor, "impostor")),
    );
    refused(fooled, "impostor").await;
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
    // A meeting named like a prosody endpoint is a room too: everyone who opens it, from any
    // address, is sent to one node, and its signalling after them.
    let mut nodes = std::collections::HashSet::new();
    for i in 1..=8 {
        let from = std::net::IpAddr::from([127, 0, 0, i]);
        for form in ["/room", "/http-bind?room=room"] {
            let sent = router.client_from(from).get(router.url(form)).send().await;
            nodes.insert(shard(&sent.unwrap()));
        }
    }
    assert_eq!(nodes.len(), 1, "the meeting \"room\" went to {nodes:?}");
    // So is a meeting named like a file, opened as a page.
    let mut nodes = std::collections::HashSet::new();
    for i in 1..=8 {
        let client = router.client_from(std::net::IpAddr::from([127, 0, 0, i]));
        let page = client
            .get(router.url("/node.js"))
            .header("sec-fetch-dest", "document");
        nodes.insert(shard(&page.send().await.unwrap()));
        let bosh = client
            .get(router.url("/http-bind?room=node.js"))
            .send()
            .await;
        nodes.insert(shard(&bosh.unwrap()));
    }
    assert_eq!(nodes.len(), 1, "the meeting \"node.js\" went to {nodes:?}");
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
    let (certs, _nodes, mut router) = h2_websocket_fleet(1, "").await;
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
    let mut h2 = h2_connection(&certs, &router).await;
    let (mut over_h2, _) = h2_websocket(&mut h2, &router, "/xmpp-websocket?room=goodbye").await;
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
    over_h2.send(Message::text("here too")).await.unwrap();
    assert_eq!(
        over_h2.next().await.unwrap().unwrap(),
        Message::text("here too"),
        "a WebSocket over HTTP/2"
    );
    over_h2.close(None).await.unwrap();
    while over_h2.next().await.is_some() {}
    drop(over_h2);
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
