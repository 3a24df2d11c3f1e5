//! The resumed-connection load of `benches/load.sh` (`RESUMED=1`): what a meeting's browsers
//! put on the edge besides their requests. A browser opens a room's page, then its XMPP
//! WebSocket and its bridge channel on connections of their own, each resuming the TLS session
//! of the one before; a reconnect after a network change does the same.
//!
//! `tls_resume drive URL CLIENTS SECONDS` runs CLIENTS closed loops against URL (`https://…`,
//! any certificate accepted), each a browser of its own with its own session store: open a new
//! TLS connection (from the second on resuming the TLS session of the one before), send one
//! BOSH-style POST `/http-bind?room=room-N` with `Connection: close`, read the answer to its
//! end, repeat.
//! After a one-second warm-up it counts connections for SECONDS and prints
//! `connections_per_s p50_us p99_us errors resumed_percent`.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["drive", url, clients, seconds] => runtime.block_on(drive(
            url,
            clients.parse().expect("CLIENTS: a number"),
            Duration::from_secs(seconds.parse().expect("SECONDS: a number")),
        )),
        _ => {
            eprintln!("usage: tls_resume drive URL CLIENTS SECONDS");
            std::process::exit(2);
        }
    }
}

/// What every loop adds to.
#[derive(Default)]
struct Totals {
    counting: AtomicBool,
    stop: AtomicBool,
    connections: AtomicU64,
    resumed: AtomicU64,
    errors: AtomicU64,
}

async fn drive(url: &str, clients: usize, seconds: Duration) {
    let authority = url.trim_start_matches("https://").trim_end_matches('/');
    let addr: std::net::SocketAddr = tokio::net::lookup_host(authority)
        .await
        .expect("URL: https://host:port")
        .next()
        .expect("an address");
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host);
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).expect("a host name");
    let totals = Arc::new(Totals::default());
    let times = Arc::new(Mutex::new(
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds"),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..clients {
        // A browser of its own: its own session store, so that loops never take each other's
        // tickets.
        let mut tls = jitsi_router::bench::insecure_client_config();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let request = format!(
            "POST /http-bind?room=room-{i} HTTP/1.1\r\nHost: {authority}\r\n\
             Content-Type: text/xml\r\nContent-Length: 15\r\nConnection: close\r\n\r\n\
             <body rid='1'/>"
        );
        let (name, totals, times) = (name.clone(), totals.clone(), times.clone());
        tasks.spawn(async move {
            let mut local =
                hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            while !totals.stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                match exchange(&connector, addr, name.clone(), request.as_bytes()).await {
                    Ok(resumed) if totals.counting.load(Ordering::Relaxed) => {
                        totals.connections.fetch_add(1, Ordering::Relaxed);
                        totals
                            .resumed
                            .fetch_add(u64::from(resumed), Ordering::Relaxed);
                        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(0);
                        let _ = local.record(micros.clamp(1, 60_000_000));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if totals.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("tls_resume: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            if let Ok(mut all) = times.lock() {
                let _ = all.add(&local);
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    totals.counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(seconds).await;
    totals.counting.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    totals.stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    let times = times.lock().expect("not poisoned");
    let connections = totals.connections.load(Ordering::Relaxed);
    println!(
        "{:.0} {} {} {} {:.1}",
        connections as f64 / elapsed.as_secs_f64(),
        times.value_at_quantile(0.5),
        times.value_at_quantile(0.99),
        totals.errors.load(Ordering::Relaxed),
        100.0 * totals.resumed.load(Ordering::Relaxed) as f64 / connections.max(1) as f64,
    );
}

/// One connection: the handshake, the request, its answer to the end (by then the session
/// tickets sent after the handshake are stored). Whether the handshake resumed a session.
async fn exchange(
    connector: &tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
    name: rustls::pki_types::ServerName<'static>,
    request: &[u8],
) -> Result<bool, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let mut tls = (connector.connect(name, tcp).await).map_err(|e| format!("handshake: {e}"))?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    tls.write_all(request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    // A peer that closes without close_notify ends the answer all the same.
    let _ = tls.read_to_end(&mut answer).await;
    if !answer.starts_with(b"HTTP/1.1 200") {
        return Err(format!(
            "answer: {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(80)])
        ));
    }
    Ok(resumed)
}
