//! Memory of open WebSocket tunnels, against HAProxy and nginx: every participant of a Jitsi
//! meeting holds two WebSockets through the router (XMPP and the bridge channel) for the whole
//! meeting, mostly idle. The project's target is at most 10 KiB per idle tunnel.
//!
//! `cargo bench --bench tunnels [-- <tunnels, default 2000>]` starts one simulated node (a
//! WebSocket echo), then each proxy in turn in front of it, all terminating TLS with the same
//! certificate: jitsi-router (this tree's release build, or `JITSI_ROUTER_BIN`), HAProxy as
//! meet.jit.si runs it (a stick table of rooms in front of `balance url_param room`, `hash-type
//! consistent`, as in `benches/load.sh`) and nginx (`hash $arg_room consistent`,
//! `proxy_buffering` as shipped), each with two threads or workers as in `benches/load.sh`. Through each it opens the tunnels
//! (`/xmpp-websocket?room=...`, 64 handshakes at a time), sends one message on each and reads its
//! echo, lets them sit idle for a second, and reports how much the proxy's resident memory grew
//! per open tunnel (kernel socket buffers are not in it, and are alike for all three). A peer that
//! is not installed is skipped with a note (`benches/load.sh` installs both).
//! With `H2=1` the tunnels are WebSockets over HTTP/2 (RFC 8441), as Chromium and Firefox open
//! them through a proxy that offers it: two per connection (a participant's XMPP and bridge
//! channel on the connection of its page), through jitsi-router and HAProxy (nginx has none).
//! Loopback only; temporary folder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use jitsi_router::demo::SimNode;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A WebSocket over an HTTP/2 stream.
type H2Ws = tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

/// An HTTP/2 connection's sender.
type H2 = hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>;

/// What keeps tunnels open: the WebSockets, and for HTTP/2 their connection.
type Open = Vec<Box<dyn Send>>;

/// Handshakes in flight at once.
const AT_ONCE: usize = 64;

fn main() {
    let tunnels: usize = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(2000);
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(run(tunnels));
}

async fn run(tunnels: usize) {
    let h2 = std::env::var_os("H2").is_some();
    let dir = tempfile::tempdir().expect("a temporary folder");
    let certs = Certs::write(dir.path());
    let node = SimNode::start("jitsi-a", "127.0.0.1:0".parse().unwrap())
        .await
        .expect("the simulated node starts");
    let over = if h2 {
        ", over HTTP/2, two a connection"
    } else {
        ""
    };
    println!("{tunnels} WebSocket tunnels through each proxy{over}, each used once, then idle");
    println!(
        "{:<14} {:>14} {:>16} {:>16}",
        "proxy", "KiB per tunnel", "RSS before, MiB", "RSS open, MiB"
    );
    let mut base = None;
    for proxy in [Proxy::Router, Proxy::Haproxy, Proxy::Nginx] {
        if h2 && matches!(proxy, Proxy::Nginx) {
            println!("{:<14} skipped: no WebSockets over HTTP/2", proxy.name());
            continue;
        }
        let Some(mut running) = proxy.start(dir.path(), &certs, node.addr()) else {
            println!(
                "{:<14} skipped: {} is not installed",
                proxy.name(),
                proxy.name()
            );
            continue;
        };
        running.wait_until_up(&certs).await;
        // Warm-up: the first tunnels' one-time allocations (threads' caches, TLS session state)
        // are not a tunnel's cost.
        drop(open(&certs, running.addr, 128, h2).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = running.rss_kib();
        let open_now = open(&certs, running.addr, tunnels, h2).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = running.rss_kib();
        drop(open_now);
        let per = after.saturating_sub(before) as f64 / tunnels as f64;
        let ratio = match base {
            None => {
                base = Some(per);
                String::new()
            }
            Some(base) => format!("  ({:.2}× jitsi-router's)", per / base),
        };
        println!(
            "{:<14} {:>14.1} {:>16.1} {:>16.1}{ratio}",
            proxy.name(),
            per,
            before as f64 / 1024.0,
            after as f64 / 1024.0
        );
    }
}

/// Opens `count` tunnels (over HTTP/2, two a connection), `AT_ONCE` handshakes at a time, and
/// has each echo one message.
async fn open(certs: &Certs, addr: SocketAddr, count: usize, h2: bool) -> Open {
    let mut open: Open = Vec::with_capacity(count);
    let step = if h2 { 2 } else { 1 };
    let mut started = 0;
    while started < count {
        let batch = AT_ONCE.min(count - started);
        let firsts = (started..started + batch).step_by(step);
        if h2 {
            let participants = firsts.map(|i| participant_h2(certs, addr, i));
            for held in futures_util::future::join_all(participants).await {
                open.push(Box::new(held));
            }
        } else {
            let handshakes = firsts.map(|i| tunnel(certs, addr, i));
            for ws in futures_util::future::join_all(handshakes).await {
                open.push(Box::new(ws));
            }
        }
        started += batch;
    }
    open
}

/// One HTTP/2 connection with its page fetched and two WebSockets on it, each echoing once.
async fn participant_h2(certs: &Certs, addr: SocketAddr, i: usize) -> (H2, [H2Ws; 2]) {
    let tcp = TcpStream::connect(addr).await.expect("the proxy accepts");
    let connector = tokio_rustls::TlsConnector::from(certs.client_h2.clone());
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.expect("a TLS handshake");
    let io = hyper_util::rt::TokioIo::new(tls);
    let executor = hyper_util::rt::TokioExecutor::new();
    let (mut h2, connection) = hyper::client::conn::http2::handshake(executor, io)
        .await
        .expect("an HTTP/2 connection");
    tokio::spawn(connection);
    let url = |path: &str| format!("https://localhost:{}{path}?room=bench-{i}", addr.port());
    let request = |path: &str, connect: bool| {
        let mut request = http::Request::builder().uri(url(path));
        if connect {
            request = (request.method(http::Method::CONNECT))
                .header("sec-websocket-version", "13")
                .extension(hyper::ext::Protocol::from_static("websocket"));
        }
        request.body(http_body_util::Empty::new()).unwrap()
    };
    // The page: the proxy's SETTINGS (extended CONNECT allowed) arrive meanwhile.
    h2.ready().await.expect("ready");
    let page = h2
        .send_request(request("/page", false))
        .await
        .expect("a page");
    assert_eq!(page.status(), 200, "participant {i}: the page");
    let mut sockets = Vec::new();
    for path in ["/xmpp-websocket", "/colibri-ws"] {
        h2.ready().await.expect("ready");
        let mut answer = (h2.send_request(request(path, true)).await)
            .unwrap_or_else(|e| panic!("participant {i}: {path}: {e}"));
        assert_eq!(answer.status(), 200, "participant {i}: {path}");
        let upgraded = hyper::upgrade::on(&mut answer).await.expect("a tunnel");
        let io = hyper_util::rt::TokioIo::new(upgraded);
        let role = tokio_tungstenite::tungstenite::protocol::Role::Client;
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(io, role, None).await;
        let text = format!("hello from participant {i}, {path}");
        ws.send(Message::text(text.clone())).await.expect("sent");
        let echo = ws.next().await.expect("an echo").expect("a message");
        assert_eq!(
            echo,
            Message::text(text),
            "participant {i}: the node's echo"
        );
        sockets.push(ws);
    }
    let Ok(sockets) = <[H2Ws; 2]>::try_from(sockets) else {
        panic!("participant {i}: two WebSockets");
    };
    (h2, sockets)
}

async fn tunnel(certs: &Certs, addr: SocketAddr, i: usize) -> Ws {
    let url = format!(
        "wss://localhost:{}/xmpp-websocket?room=bench-{i}",
        addr.port()
    );
    let request = url.into_client_request().expect("a WebSocket request");
    let tcp = TcpStream::connect(addr).await.expect("the proxy accepts");
    let connector = tokio_tungstenite::Connector::Rustls(certs.client.clone());
    let (mut ws, _) =
        tokio_tungstenite::client_async_tls_with_config(request, tcp, None, Some(connector))
            .await
            .unwrap_or_else(|e| panic!("tunnel {i} through {addr}: {e}"));
    let text = format!("hello from tunnel {i}");
    ws.send(Message::text(text.clone())).await.expect("sent");
    let echo = ws.next().await.expect("an echo").expect("a message");
    assert_eq!(echo, Message::text(text), "tunnel {i}: the node's echo");
    ws
}

/// The certificate every proxy serves, and a client that trusts it.
struct Certs {
    cert: PathBuf,
    key: PathBuf,
    /// Certificate then key, as HAProxy reads them.
    both: PathBuf,
    client: Arc<rustls::ClientConfig>,
    /// The same, offering HTTP/2.
    client_h2: Arc<rustls::ClientConfig>,
}

impl Certs {
    fn write(dir: &Path) -> Certs {
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("a certificate");
        let (cert_pem, key_pem) = (generated.cert.pem(), generated.signing_key.serialize_pem());
        let (cert, key, both) = (
            dir.join("cert.pem"),
            dir.join("key.pem"),
            dir.join("both.pem"),
        );
        std::fs::write(&cert, &cert_pem).unwrap();
        std::fs::write(&key, &key_pem).unwrap();
        std::fs::write(&both, format!("{cert_pem}{key_pem}")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(generated.cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut client_h2 = client.clone();
        client_h2.alpn_protocols = vec![b"h2".to_vec()];
        Certs {
            cert,
            key,
            both,
            client: Arc::new(client),
            client_h2: Arc::new(client_h2),
        }
    }
}

#[derive(Clone, Copy)]
enum Proxy {
    Router,
    Haproxy,
    Nginx,
}

struct Running {
    child: Child,
    addr: SocketAddr,
}

impl Proxy {
    fn name(self) -> &'static str {
        match self {
            Proxy::Router => "jitsi-router",
            Proxy::Haproxy => "haproxy",
            Proxy::Nginx => "nginx",
        }
    }

    fn start(self, dir: &Path, certs: &Certs, node: SocketAddr) -> Option<Running> {
        let addr = free_addr();
        let (cert, key) = (certs.cert.display(), certs.key.display());
        let mut command = match self {
            Proxy::Router => {
                let config = dir.join("router.toml");
                let admin = free_addr();
                std::fs::write(
                    &config,
                    format!(
                        "[server]\nlisten = \"{addr}\"\nadmin_listen = \"{admin}\"\n\
                         websockets_over_http2 = true\n\
                         [tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n\
                         [limits]\nnew_room_burst = 1000000\n\
                         [[nodes]]\nname = \"jitsi-a\"\nupstream = \"http://{node}\"\n"
                    ),
                )
                .unwrap();
                let binary = std::env::var_os("JITSI_ROUTER_BIN")
                    .unwrap_or_else(|| env!("CARGO_BIN_EXE_jitsi-router").into());
                let mut command = Command::new(binary);
                command
                    .args(["serve", "--config"])
                    .arg(&config)
                    .env("RUST_LOG", "warn");
                command
            }
            Proxy::Haproxy => {
                let binary = installed("/usr/sbin/haproxy")?;
                let config = dir.join("haproxy.cfg");
                std::fs::write(
                    &config,
                    format!(
                        "global\n  maxconn 9000\n  nbthread 2\n\
                         defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  \
                         timeout server 60s\n  timeout tunnel 1h\n\
                         frontend fe\n  bind {addr} ssl crt {} alpn h2,http/1.1\n  \
                         default_backend nodes\n\
                         backend nodes\n  balance url_param room\n  hash-type consistent\n  \
                         stick-table type string len 200 size 200k expire 5m\n  \
                         stick on url_param(room),lower\n  \
                         server jitsi-a {node}\n",
                        certs.both.display()
                    ),
                )
                .unwrap();
                let mut command = Command::new(binary);
                command.arg("-f").arg(&config).arg("-db");
                command
            }
            Proxy::Nginx => {
                let binary = installed("/usr/sbin/nginx")?;
                let prefix = dir.join("nginx");
                std::fs::create_dir_all(&prefix).unwrap();
                let config = dir.join("nginx.conf");
                std::fs::write(
                    &config,
                    format!(
                        "worker_processes 2; worker_rlimit_nofile 20000; pid {p}/nginx.pid;\n\
                         error_log {p}/error.log; daemon off;\n\
                         events {{ worker_connections 10000; }}\n\
                         http {{ access_log off; ssl_protocols TLSv1.2 TLSv1.3;\n\
                           upstream nodes {{ hash $arg_room consistent; server {node}; }}\n\
                           server {{ listen {addr} ssl; ssl_certificate {cert}; \
                         ssl_certificate_key {key};\n\
                             location / {{ proxy_pass http://nodes; proxy_http_version 1.1;\n\
                               proxy_set_header Upgrade $http_upgrade;\n\
                               proxy_set_header Connection \"upgrade\";\n\
                               proxy_read_timeout 1h; }} }} }}\n",
                        p = prefix.display()
                    ),
                )
                .unwrap();
                let mut command = Command::new(binary);
                command.arg("-c").arg(&config).arg("-p").arg(&prefix);
                command
            }
        };
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.name()));
        Some(Running { child, addr })
    }
}

impl Running {
    async fn wait_until_up(&mut self, certs: &Certs) {
        for _ in 0..100 {
            if let Ok(tcp) = TcpStream::connect(self.addr).await {
                let connector = tokio_rustls::TlsConnector::from(certs.client.clone());
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                if connector.connect(name, tcp).await.is_ok() {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the proxy on {} exited: {status}", self.addr);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the proxy on {} did not come up", self.addr);
    }

    /// Resident memory of the proxy and its child processes (nginx's workers), KiB.
    fn rss_kib(&self) -> u64 {
        let mut pids = vec![self.child.id()];
        let children = format!(
            "/proc/{}/task/{}/children",
            self.child.id(),
            self.child.id()
        );
        if let Ok(text) = std::fs::read_to_string(children) {
            pids.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
        pids.iter()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .filter_map(|status| {
                let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .sum()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn installed(path: &str) -> Option<&str> {
    Path::new(path).exists().then_some(path)
}

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address")
}
