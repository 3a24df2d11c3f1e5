//! The soak: ten minutes (by default) of the traffic a Jitsi fleet puts on the router, with the
//! trouble an operator meets, through this tree's release build (or `JITSI_ROUTER_BIN`).
//!
//! `benches/soak.sh [minutes]` (or `cargo bench --bench soak -- [minutes]`) runs, against three
//! simulated nodes, all at once:
//! - participants from eight loopback addresses opening room pages, polling BOSH and holding
//!   XMPP WebSockets that echo and close, over a pool of rooms, and new rooms all along;
//! - one node (`jitsi-c`) going down for 20 s every 90 s and coming back;
//! - a config reload every minute;
//! - a burst of 500 silent TLS connections every two minutes.
//!
//! It records which node answered each request of each room and reports:
//! - split rooms: a room answered by a node other than its last one while that last node was
//!   up (only rooms of the downed node may move; they stay where they land);
//! - 5xx answers not explained by the downed node (its own `502`/`504`, or a `503` while it was
//!   down);
//! - the router's resident memory and open files after a warm-up minute, and a minute after
//!   the traffic stopped.
//!
//! It exits 1 unless there were no splits, no unexplained 5xx, and memory and open files came
//! back within 10 % of the warm-up's.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use jitsi_router::demo::SimNode;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Rooms that participants keep coming back to.
const ROOMS: usize = 400;
/// Loopback addresses the participants come from.
const CLIENTS: u8 = 8;
/// The node that goes down and comes back.
const FLAPPING: &str = "jitsi-c";

fn main() {
    let minutes: u64 = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(10);
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let passed = runtime.block_on(soak(Duration::from_secs(minutes * 60)));
    std::process::exit(if passed { 0 } else { 1 });
}

/// What the participants saw.
#[derive(Default)]
struct Record {
    /// Each room's last node.
    rooms: Mutex<HashMap<String, String>>,
    splits: AtomicU64,
    requests: AtomicU64,
    websockets: AtomicU64,
    new_rooms: AtomicU64,
    downed_5xx: AtomicU64,
    other_5xx: AtomicU64,
    other_errors: AtomicU64,
    /// Whether the flapping node is down (or just came back: its rooms may still move).
    flapping_down: AtomicBool,
}

impl Record {
    /// Notes that `room` was answered by `node`; a move off a node that was up is a split.
    fn answered(&self, room: &str, node: &str) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut rooms = self.rooms.lock().unwrap();
        match rooms.get(room) {
            Some(last) if last == node => {}
            Some(last) => {
                if last != FLAPPING {
                    self.splits.fetch_add(1, Ordering::Relaxed);
                    eprintln!("split: room {room} went from {last} to {node}");
                }
                rooms.insert(room.to_owned(), node.to_owned());
            }
            None => {
                rooms.insert(room.to_owned(), node.to_owned());
            }
        }
    }

    fn failed(&self, status: u16, body: &str) {
        if status >= 500 {
            let downed = body.contains(FLAPPING)
                || (status == 503 && self.flapping_down.load(Ordering::Relaxed));
            let counter = if downed {
                &self.downed_5xx
            } else {
                eprintln!("unexplained {status}: {body}");
                &self.other_5xx
            };
            counter.fetch_add(1, Ordering::Relaxed);
        } else {
            eprintln!("unexpected {status}: {body}");
            self.other_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn soak(duration: Duration) -> bool {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let (cert, key, client_tls) = certificate(dir.path());
    let mut nodes = Vec::new();
    for name in ["jitsi-a", "jitsi-b", FLAPPING] {
        let node = SimNode::start(name, "127.0.0.1:0".parse().unwrap())
            .await
            .expect("a simulated node");
        nodes.push(node);
    }
    let flapping_addr = nodes[2].addr();
    let config_path = dir.path().join("router.toml");
    let https = free_addr();
    let admin = free_addr();
    let config = format!(
        "[server]\nlisten = \"{https}\"\nadmin_listen = \"{admin}\"\n\
         [tls]\ncert = {cert:?}\nkey = {key:?}\n\
         [health]\ninterval = \"1s\"\ntimeout = \"1s\"\nfall = 2\nrise = 2\n\
         [limits]\nnew_rooms_per_second = 20\n\
         {}",
        nodes
            .iter()
            .map(|n| format!(
                "[[nodes]]\nname = \"{}\"\nupstream = \"{}\"\n",
                n.name(),
                n.url()
            ))
            .collect::<String>()
    );
    std::fs::write(&config_path, &config).unwrap();
    let mut router = start_router(&config_path);
    wait_until_up(https).await;
    let pid = router.id();
    println!(
        "soak: {} min against three nodes; router pid {pid}",
        duration.as_secs() / 60
    );

    let record = Arc::new(Record::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        let from: IpAddr = format!("127.0.0.{}", client + 2).parse().unwrap();
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .resolve("localhost", https)
            .local_address(from)
            .timeout(Duration::from_secs(100))
            .build()
            .unwrap();
        for worker in 0..3 {
            let (http, record, stop) = (http.clone(), record.clone(), stop.clone());
            tasks.spawn(participant(http, https, record, stop, client, worker));
        }
        let (record, stop, tls) = (record.clone(), stop.clone(), client_tls.clone());
        tasks.spawn(websockets(tls, https, from, record, stop, client));
    }
    tasks.spawn(flap(
        nodes.pop().unwrap(),
        flapping_addr,
        record.clone(),
        stop.clone(),
    ));
    tasks.spawn(reloads(config_path.clone(), config.clone(), stop.clone()));
    tasks.spawn(silent_bursts(client_tls.clone(), https, stop.clone()));

    // The warm-up minute (or a sixth of a short soak), then the baseline.
    let warm_up = (duration / 6).min(Duration::from_secs(60));
    tokio::time::sleep(warm_up).await;
    let (rss_base, files_base) = (rss_kib(pid), open_files(pid));
    println!("after {warm_up:?}: {rss_base} KiB resident, {files_base} files open");
    tokio::time::sleep(duration.saturating_sub(warm_up)).await;
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    let traffic_for = started.elapsed();
    let (rss_end, files_end) = (rss_kib(pid), open_files(pid));
    // A minute later, as on the issue: what the router gives back once quiet.
    let mut rss_after = rss_end;
    let mut files_after = files_end;
    for _ in 0..60 {
        rss_after = rss_kib(pid);
        files_after = open_files(pid);
        if within(rss_after, rss_base) && within(files_after as u64, files_base as u64) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .map(|r| r.text());
    let metrics = match metrics {
        Ok(text) => text.await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let _ = router.kill();
    let _ = router.wait();

    let r = &record;
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!("traffic for {:.0} s", traffic_for.as_secs_f64());
    println!(
        "requests {} ({:.0}/s), websockets {}, new rooms {}, rooms seen {}",
        load(&r.requests),
        load(&r.requests) as f64 / traffic_for.as_secs_f64(),
        load(&r.websockets),
        load(&r.new_rooms),
        r.rooms.lock().unwrap().len()
    );
    println!(
        "split rooms {}; 5xx from the downed node {}, other 5xx {}, other errors {}",
        load(&r.splits),
        load(&r.downed_5xx),
        load(&r.other_5xx),
        load(&r.other_errors)
    );
    println!(
        "resident memory: {rss_base} KiB after warm-up, {rss_end} KiB at the end, {rss_after} KiB once quiet ({:+.1} %)",
        percent(rss_after, rss_base)
    );
    println!(
        "open files: {files_base} after warm-up, {files_end} at the end, {files_after} once quiet"
    );
    for line in metrics.lines().filter(|l| {
        l.starts_with("jitsi_router_timeouts_total")
            || l.starts_with("jitsi_router_limited_total")
            || l.starts_with("jitsi_router_local_faults_total")
            || l.starts_with("jitsi_router_config_reloads_total")
            || l.starts_with("jitsi_router_requests_total")
    }) {
        println!("  {line}");
    }
    let passed = load(&r.splits) == 0
        && load(&r.other_5xx) == 0
        && within(rss_after, rss_base)
        && within(files_after as u64, files_base as u64);
    println!("{}", if passed { "PASSED" } else { "FAILED" });
    passed
}

fn within(now: u64, base: u64) -> bool {
    now <= base + base / 10
}

fn percent(now: u64, base: u64) -> f64 {
    (now as f64 - base as f64) * 100.0 / base as f64
}

/// Room pages, `config.js` and BOSH polls over the room pool, and a new room now and then.
async fn participant(
    http: reqwest::Client,
    https: SocketAddr,
    record: Arc<Record>,
    stop: Arc<AtomicBool>,
    client: u8,
    worker: u8,
) {
    let base = format!("https://localhost:{}", https.port());
    let mut i: u64 = u64::from(client) * 7919 + u64::from(worker) * 104_729;
    while !stop.load(Ordering::Relaxed) {
        i = i
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let room = if i % 50 == 0 {
            record.new_rooms.fetch_add(1, Ordering::Relaxed);
            format!("new-{client}-{worker}-{i:x}")
        } else {
            format!("room-{}", (i >> 33) as usize % ROOMS)
        };
        let request = match i % 3 {
            0 => http.get(format!("{base}/{room}")),
            1 => http.get(format!("{base}/config.js?room={room}")),
            _ => http
                .post(format!("{base}/http-bind?room={room}"))
                .body("<body rid='1' xmlns='http://jabber.org/protocol/httpbind'/>"),
        };
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let node = shard(response.headers());
                let body = response.text().await.unwrap_or_default();
                if status == 200 {
                    record.answered(&room, &node);
                } else {
                    record.failed(status, &body);
                }
            }
            Err(e) => {
                eprintln!("request failed: {e}");
                record.other_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The node an answer names.
fn shard(headers: &http::HeaderMap) -> String {
    headers
        .get("x-jitsi-shard")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// XMPP WebSockets: open, echo a few messages over a few seconds, close.
async fn websockets(
    tls: Arc<rustls::ClientConfig>,
    https: SocketAddr,
    from: IpAddr,
    record: Arc<Record>,
    stop: Arc<AtomicBool>,
    client: u8,
) {
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let room = format!(
            "room-{}",
            (n * 37 + u64::from(client) * 11) as usize % ROOMS
        );
        let url = format!(
            "wss://localhost:{}/xmpp-websocket?room={room}",
            https.port()
        );
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(from, 0)).unwrap();
        let Ok(tcp) = socket.connect(https).await else {
            record.other_errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let connector = tokio_tungstenite::Connector::Rustls(tls.clone());
        let request = url.into_client_request().unwrap();
        match tokio_tungstenite::client_async_tls_with_config(request, tcp, None, Some(connector))
            .await
        {
            Ok((mut ws, response)) => {
                record.websockets.fetch_add(1, Ordering::Relaxed);
                let node = shard(response.headers());
                record.answered(&room, &node);
                for k in 0..5 {
                    let text = format!("<message id='{k}'/>");
                    if ws.send(Message::text(text.clone())).await.is_err() {
                        break;
                    }
                    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                        Ok(Some(Ok(echo))) if echo == Message::text(text) => {}
                        // The downed node takes its tunnels with it.
                        _ if node == FLAPPING => break,
                        other => {
                            eprintln!("websocket echo failed: {other:?}");
                            record.other_errors.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                let _ = ws.close(None).await;
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                let body = response
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                record.failed(status, &body);
            }
            Err(e) => {
                eprintln!("websocket failed: {e}");
                record.other_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// `jitsi-c` down for 20 s every 90 s.
async fn flap(node: SimNode, addr: SocketAddr, record: Arc<Record>, stop: Arc<AtomicBool>) {
    let mut node = Some(node);
    loop {
        if sleep_unless_stopped(Duration::from_secs(70), &stop).await {
            return;
        }
        record.flapping_down.store(true, Ordering::Relaxed);
        drop(node.take());
        println!("{FLAPPING} down");
        sleep_unless_stopped(Duration::from_secs(20), &stop).await;
        match SimNode::start(FLAPPING, addr).await {
            Ok(back) => node = Some(back),
            Err(e) => eprintln!("{FLAPPING} could not come back: {e}"),
        }
        println!("{FLAPPING} back");
        // Until health checks see it again (rise × interval), a 503 may still be its doing.
        tokio::time::sleep(Duration::from_secs(3)).await;
        record.flapping_down.store(false, Ordering::Relaxed);
        if stop.load(Ordering::Relaxed) {
            return;
        }
    }
}

/// Rewrites the config (a comment changes) every minute: the router reloads it.
async fn reloads(path: std::path::PathBuf, config: String, stop: Arc<AtomicBool>) {
    let mut n = 0;
    while !sleep_unless_stopped(Duration::from_secs(60), &stop).await {
        n += 1;
        std::fs::write(&path, format!("# reload {n}\n{config}")).unwrap();
    }
}

/// 500 TLS connections that say nothing, every two minutes; the router closes them.
async fn silent_bursts(tls: Arc<rustls::ClientConfig>, https: SocketAddr, stop: Arc<AtomicBool>) {
    while !sleep_unless_stopped(Duration::from_secs(120), &stop).await {
        let mut silent = Vec::new();
        for _ in 0..500 {
            let Ok(tcp) = tokio::net::TcpStream::connect(https).await else {
                continue;
            };
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            if let Ok(stream) = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await
            {
                silent.push(stream);
            }
        }
        println!("{} silent connections open", silent.len());
        // Held until the router closes them (request_head_timeout, 30 s by default).
        tokio::time::sleep(Duration::from_secs(40)).await;
    }
}

/// Sleeps `duration` in steps; whether the soak was stopped meanwhile.
async fn sleep_unless_stopped(duration: Duration, stop: &AtomicBool) -> bool {
    let end = Instant::now() + duration;
    while Instant::now() < end {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.load(Ordering::Relaxed)
}

fn start_router(config: &Path) -> Child {
    let binary = std::env::var_os("JITSI_ROUTER_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_jitsi-router").into());
    Command::new(binary)
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the router starts")
}

async fn wait_until_up(addr: SocketAddr) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the router is not listening on {addr}");
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A self-signed certificate for `localhost` written to `dir`, and a client that trusts it.
fn certificate(
    dir: &Path,
) -> (
    std::path::PathBuf,
    std::path::PathBuf,
    Arc<rustls::ClientConfig>,
) {
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("a certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(generated.cert.der().clone()).unwrap();
    let mut client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    (cert, key, Arc::new(client))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("RssAnon:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}
