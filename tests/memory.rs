//! What slow clients cost the router: a bounded amount of memory per slow or stalled answer
//! on both HTTP versions, given back when they leave; and an admin listing of a million rooms
//! that holds up no proxied request.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The most router memory one answer a client does not read may hold.
const PER_SLOW_READER_KIB: u64 = 128;

/// An answer larger than every buffer between the router and a client that does not read
/// (the kernel's socket buffers on loopback take a few MiB).
const BUNDLE: usize = 8 * 1024 * 1024;

/// `clients` HTTP/1.1 connections and `clients` HTTP/2 streams (ten connections, offering
/// 16 MiB windows as browsers do) asking for `bytes`; read to the end when `read`, else held
/// unread. What stays open is returned.
async fn clients(
    certs: &Certs,
    router: &Router,
    clients: usize,
    bytes: usize,
    read: bool,
) -> Vec<Box<dyn std::any::Any + Send>> {
    let path = format!("/bundle?bytes={bytes}");
    let mut held: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
    let mut reading = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let mut tls = certs.connect(router.https, b"http/1.1").await;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        tls.write_all(request.as_bytes()).await.unwrap();
        if read {
            reading.spawn(async move {
                let mut all = Vec::new();
                tls.read_to_end(&mut all).await.unwrap();
                assert!(all.len() > bytes);
            });
        } else {
            held.push(Box::new(tls));
        }
    }
    for _ in 0..clients / 10 {
        let tls = certs.connect(router.https, b"h2").await;
        let (client, connection) = h2::client::Builder::new()
            .initial_window_size(16 * 1024 * 1024)
            .initial_connection_window_size(64 * 1024 * 1024)
            .handshake::<_, bytes::Bytes>(tls)
            .await
            .unwrap();
        let connection = tokio::spawn(connection);
        for _ in 0..10 {
            let mut ready = client.clone().ready().await.unwrap();
            let request = http::Request::get(router.url(&path)).body(()).unwrap();
            let (answer, _) = ready.send_request(request, true).unwrap();
            if read {
                reading.spawn(async move {
                    let mut body = answer.await.unwrap().into_body();
                    let mut got = 0;
                    while let Some(chunk) = body.data().await {
                        let chunk = chunk.unwrap();
                        got += chunk.len();
                        let _ = body.flow_control().release_capacity(chunk.len());
                    }
                    assert_eq!(got, bytes);
                });
            } else {
                held.push(Box::new(answer));
            }
        }
        held.push(Box::new((client, connection)));
    }
    while let Some(done) = reading.join_next().await {
        done.unwrap();
    }
    held
}

/// The router's memory once it stopped changing.
async fn settled_rss(router: &Router) -> u64 {
    let mut last = router.rss_kib();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = router.rss_kib();
        if now.abs_diff(last) <= 256 {
            return now.max(last);
        }
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_readers_hold_little_memory_and_give_it_back() {
    let certs = Certs::new();
    let node = RawNode::start(RawAnswer::Sized).await;
    let router = Router::start(&certs, &config(&certs, "", &[("sized", node.url())]));
    // The baseline: the router after as many clients at once who read their answers, so that
    // it holds what serving that many takes (caches, tables) and only slow readers differ.
    drop(clients(&certs, &router, 100, 64 * 1024, true).await);
    drop(clients(&certs, &router, 100, 64 * 1024, true).await);
    let baseline = settled_rss(&router).await;

    let slow = clients(&certs, &router, 100, BUNDLE, false).await;
    let held = settled_rss(&router).await;
    let per_reader = held.saturating_sub(baseline) / 200;
    println!("baseline {baseline} KiB; 200 slow readers {held} KiB, {per_reader} KiB each");
    assert!(
        per_reader <= PER_SLOW_READER_KIB,
        "{per_reader} KiB per slow reader (baseline {baseline} KiB, held {held} KiB)"
    );

    drop(slow);
    // What they held comes back, all but a tenth: the allocator may keep a few hundred KiB of
    // its high-water mark (the same after every round of slow readers, so not a leak).
    let kept = (held.saturating_sub(baseline)) / 10;
    let mut now = router.rss_kib();
    for _ in 0..60 {
        if now <= baseline + kept {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        now = router.rss_kib();
    }
    println!("after they left: {now} KiB");
    assert!(
        now <= baseline + kept,
        "{now} KiB a minute after the slow readers left; baseline {baseline} KiB, \
         held {held} KiB, at most {kept} KiB may stay"
    );
}

/// A snapshot file pinning `count` rooms (`r-0`, `r-1`, …) to `node`.
fn snapshot_of(dir: &std::path::Path, count: usize, node: &str) -> std::path::PathBuf {
    let pins: Vec<serde_json::Value> = (0..count)
        .map(|i| serde_json::json!({ "room": format!("r-{i}"), "node": node, "idle_ms": 0 }))
        .collect();
    let path = dir.join("pins.json");
    let text = serde_json::json!({ "version": 1, "pins": pins }).to_string();
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_many_rooms_holds_up_no_proxied_request() {
    const PINS: usize = 500_000;
    let certs = Certs::new();
    let nodes = sim_nodes(1).await;
    let dir = tempfile::tempdir().unwrap();
    let snapshot = snapshot_of(dir.path(), PINS, "jitsi-a");
    let sections = format!("[pins]\nsnapshot_path = {snapshot:?}\n");
    // One runtime thread: anything that held it would hold up every request.
    let router = Router::start_under(
        &certs,
        &config(&certs, &sections, &node_entries(&nodes)),
        &["env"],
        &[("TOKIO_WORKER_THREADS", "1")],
    );
    log_shows(&router, "pins restored").await;
    let client = router.client();
    for _ in 0..3 {
        let response = client.get(router.url("/r-7")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }

    // How long a listing takes with nothing else to do.
    let mut took = Vec::new();
    for _ in 0..2 {
        let started = std::time::Instant::now();
        let listed: serde_json::Value = router.admin_json("/api/rooms?limit=3").await;
        took.push(started.elapsed());
        assert_eq!(listed["total"], PINS);
        assert_eq!(
            listed["rooms"][0]["room"], "r-7",
            "the most requested room first"
        );
        assert_eq!(listed["rooms"].as_array().unwrap().len(), 3);
    }
    let listing = *took.iter().min().unwrap();
    println!("a listing of {PINS} rooms took {took:?}");
    assert!(
        listing >= Duration::from_millis(100),
        "a listing took {listing:?}: too quick to show anything; list more rooms"
    );
    // Proxied requests alongside one more listing: none of them waits for it.
    let started = std::time::Instant::now();
    let mut gaps = Vec::new();
    let listing_again = reqwest::get(router.admin_url("/api/rooms?limit=3"));
    tokio::pin!(listing_again);
    let mut last = std::time::Instant::now();
    loop {
        tokio::select! {
            done = &mut listing_again => {
                done.unwrap();
                break;
            }
            response = client.get(router.url("/r-1")).send() => {
                assert_eq!(response.unwrap().status(), 200);
                gaps.push(last.elapsed());
                last = std::time::Instant::now();
            }
        }
    }
    let worst = gaps.iter().max().copied().unwrap_or(started.elapsed());
    println!(
        "proxied requests during a listing: {} answered, worst gap {worst:?}",
        gaps.len()
    );
    assert!(
        worst < listing / 2,
        "a proxied request waited {worst:?} during a listing of {listing:?}"
    );
}
