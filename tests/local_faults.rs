//! A shortage of the router's own (out of file descriptors) is not a node's fault: requests get
//! `503` with the reason, health stays, and no room moves.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;

/// A request for `room` on an open connection: its status line and body.
async fn ask(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    path: &str,
) -> String {
    use tokio::io::AsyncReadExt;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    // Every answer here is small and carries content-length; read until its body is in.
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return text.into_owned();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_file_descriptors_no_node_is_blamed_and_no_room_moves() {
    let certs = Certs::new();
    let nodes = sim_nodes(2).await;
    // No idle upstream connections: every request needs a new one. Fast health checks, so
    // that a blamed node would fall within the test. The cap on client connections is set
    // above the file limit, so that silent clients can use up the router's descriptors.
    let sections = "[upstream]\npool_max_idle_per_node = 0\n\n[health]\ninterval = \"200ms\"\ntimeout = \"200ms\"\nfall = 2\n\n[limits]\nmax_connections = 10000\n";
    let router = Router::start_under(
        &certs,
        &config(&certs, sections, &node_entries(&nodes)),
        &["prlimit", "--nofile=80:80", "--"],
        &[],
    );
    let mut participant = certs.connect(router.https, b"http/1.1").await;
    let first = ask(&mut participant, "/standup").await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let node = first
        .lines()
        .find_map(|l| l.strip_prefix("x-jitsi-shard: "))
        .unwrap()
        .to_owned();

    // Silent clients until the router holds every descriptor it may, and some more waiting
    // in its accept queue, which take any descriptor that comes free.
    let mut silent = Vec::new();
    while router.open_files() < 80 || silent.len() < 100 {
        silent.push(tokio::net::TcpStream::connect(router.https).await.unwrap());
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(silent.len() < 300, "the router's files did not fill up");
    }
    // Longer than fall × interval: a node blamed for these would be unhealthy by now. A
    // descriptor may come free for a moment (a health check's connection closing), so a
    // request may still get through: to the room's node, never elsewhere.
    let mut refused = 0;
    for _ in 0..10 {
        let answer = ask(&mut participant, "/standup").await;
        if answer.starts_with("HTTP/1.1 503") {
            assert!(answer.contains("out of file descriptors"), "{answer}");
            assert!(
                answer.to_ascii_lowercase().contains("retry-after:"),
                "{answer}"
            );
            refused += 1;
        } else {
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            assert!(
                answer.contains(&format!("x-jitsi-shard: {node}")),
                "room moved: {answer}"
            );
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(
        refused >= 5,
        "only {refused} of 10 requests met the shortage"
    );
    drop(silent);

    // Descriptors back: the room is where it was, every node healthy, nothing counted on them.
    eventually(
        Duration::from_secs(10),
        "requests to succeed again",
        || async { router.open_files() < 70 },
    )
    .await;
    let again = ask(&mut participant, "/standup").await;
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");
    assert!(
        again.contains(&format!("x-jitsi-shard: {node}")),
        "room moved: {again}"
    );
    let m = metrics(&router).await;
    assert!(m["jitsi_router_local_faults_total{kind=\"process_files\"}"] >= 5.0);
    for node in &nodes {
        let name = node.name();
        assert_eq!(
            m[&format!("jitsi_router_node_healthy{{node=\"{name}\"}}")],
            1.0
        );
        assert!(!m.contains_key(&format!(
            "jitsi_router_requests_total{{node=\"{name}\",class=\"5xx\"}}"
        )));
    }
    assert!(m["jitsi_router_requests_total{node=\"none\",class=\"5xx\"}"] >= 5.0);
    let logs = router.logs();
    assert!(!logs.contains("node unhealthy"), "{logs}");
    assert!(!logs.contains("room moved"), "{logs}");
}
