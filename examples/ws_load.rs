//! The WebSocket load of `benches/load.sh` (`WEBSOCKET=1`): what a running Jitsi fleet puts on
//! the router all day, many open signalling tunnels exchanging XMPP-sized frames.
//!
//! `ws_load echo ADDR` serves a WebSocket echo (the "node"; any other request gets an empty
//! `200`, so health checks pass). `ws_load drive URL TUNNELS SECONDS`
//! opens TUNNELS `wss://` connections to `URL/xmpp-websocket?room=room-N` (any certificate
//! accepted) and runs each as a closed loop: send a 200-byte text frame, wait for its echo,
//! repeat. After a one-second warm-up it counts round trips for SECONDS and prints
//! `messages_per_s p50_us p99_us errors`.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// About an XMPP presence or a groupchat message.
const FRAME: usize = 200;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["echo", addr] => runtime.block_on(echo(addr)),
        ["drive", url, tunnels, seconds] => runtime.block_on(drive(
            url,
            tunnels.parse().expect("TUNNELS: a number"),
            Duration::from_secs(seconds.parse().expect("SECONDS: a number")),
        )),
        _ => {
            eprintln!("usage: ws_load echo ADDR | ws_load drive URL TUNNELS SECONDS");
            std::process::exit(2);
        }
    }
}

async fn echo(addr: &str) {
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            // A plain request (a proxy's health check) gets an empty 200.
            let mut head = [0u8; 4096];
            let Ok(n) = tcp.peek(&mut head).await else {
                return;
            };
            if !String::from_utf8_lossy(&head[..n])
                .to_ascii_lowercase()
                .contains("upgrade: websocket")
            {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut tcp = tcp;
                let _ = tcp.read(&mut head).await;
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                return;
            }
            let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                return;
            };
            while let Some(Ok(message)) = ws.next().await {
                if message.is_text() || message.is_binary() {
                    if ws.send(message).await.is_err() {
                        return;
                    }
                } else if message.is_close() {
                    return;
                }
            }
        });
    }
}

async fn drive(url: &str, tunnels: usize, seconds: Duration) {
    let mut tls = jitsi_router::bench::insecure_client_config();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = Arc::new(tls);
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let rtts = Arc::new(Mutex::new(
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds"),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..tunnels {
        let url = format!("{}/xmpp-websocket?room=room-{i}", url.trim_end_matches('/'));
        let url = url.replacen("https://", "wss://", 1);
        let (tls, counting, stop) = (tls.clone(), counting.clone(), stop.clone());
        let (count, errors, rtts) = (count.clone(), errors.clone(), rtts.clone());
        tasks.spawn(async move {
            let connector = tokio_tungstenite::Connector::Rustls(tls);
            let connected = tokio_tungstenite::connect_async_tls_with_config(
                url.as_str(),
                None,
                true,
                Some(connector),
            );
            let mut ws = match connected.await {
                Ok((ws, _)) => ws,
                Err(e) => {
                    if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("ws_load: {url}: {e}");
                    }
                    return;
                }
            };
            let frame = "x".repeat(FRAME);
            let mut local =
                hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let echoed = match ws.send(Message::text(frame.clone())).await {
                    Ok(()) => ws.next().await.map(|m| m.map(|_| ())),
                    Err(e) => Some(Err(e)),
                };
                if let Some(Err(_)) | None = echoed {
                    if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("ws_load: {url}: {echoed:?}");
                    }
                    return;
                }
                if counting.load(Ordering::Relaxed) {
                    count.fetch_add(1, Ordering::Relaxed);
                    let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                    let _ = local.record(micros.clamp(1, 60_000_000));
                }
            }
            let _ = SinkExt::close(&mut ws).await;
            if let Ok(mut all) = rtts.lock() {
                let _ = all.add(&local);
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(seconds).await;
    counting.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    let rtts = rtts.lock().expect("not poisoned");
    println!(
        "{:.0} {} {} {}",
        count.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64(),
        rtts.value_at_quantile(0.5),
        rtts.value_at_quantile(0.99),
        errors.load(Ordering::Relaxed)
    );
}
