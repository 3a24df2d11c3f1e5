//! Keep-alive connections to the nodes: reused, retired when idle or when their node leaves,
//! kept per worker thread, and what happens when a node closes one under a request.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;

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
    // One HTTP/2 connection, served by one worker thread and its pool lane throughout (see
    // `a_request_lost_on_a_pooled_connection_is_sent_again_only_when_safe`).
    let client = router.client();
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
    // One HTTP/2 connection carries every request, so that one worker thread serves them all
    // with its own pooled node connection. An HTTP/1.1 client may open a second connection
    // while its first is still being handed back to its pool, and the router deals that one to
    // the other worker, whose pool is empty: the request would not meet the closing connection.
    let client = router.client();
    let first = client.get(router.url("/dropped")).send().await.unwrap();
    assert_eq!(first.version(), reqwest::Version::HTTP_2);
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

/// Each thread serving client connections keeps its own pooled connections to a node, used only
/// by the requests it serves (a connection used from another thread costs each request a wake-up
/// of that thread and back). Client connections are dealt to the threads in turn, one thread per
/// core: sequential requests from as many client connections as there are threads reach the
/// node over one connection per thread, each used again.
#[tokio::test(flavor = "multi_thread")]
async fn each_worker_thread_pools_its_own_node_connections() {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (_certs, _nodes, router) = fleet(1, "").await;
    // HTTP/2 clients: each keeps to its one connection (an HTTP/1.1 client may open another).
    let clients: Vec<reqwest::Client> = (0..threads).map(|_| router.client()).collect();
    let mut peers: Vec<HashSet<String>> = vec![HashSet::new(); threads];
    for round in 0..3 {
        for (client, peers) in clients.iter().zip(&mut peers) {
            let (seen, _) = report(client, &router.url(&format!("/lanes-{round}"))).await;
            peers.insert(seen["peer"].as_str().unwrap().to_owned());
        }
    }
    for (i, peers) in peers.iter().enumerate() {
        assert_eq!(
            peers.len(),
            1,
            "client connection {i} met several node connections: {peers:?}"
        );
    }
    let all: HashSet<&String> = peers.iter().flatten().collect();
    assert_eq!(
        all.len(),
        threads,
        "{threads} client connections, one per worker thread, shared node connections: {peers:?}"
    );
}
