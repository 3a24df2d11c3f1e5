//! A simulated Jitsi node: a small hyper server that answers like a Jitsi web front closely enough
//! for the router (and a person trying the demo) to see where each request went.
//!
//! Every answer carries `X-Sim-Node: <name>`. It serves a room page, `config.js`, BOSH
//! (`/http-bind`), WebSocket echo (`/xmpp-websocket`, `/colibri-ws/...`), `/about/health`, the
//! iframe API's `external_api.js` (a stand-in that embeds a room as the real one does), and
//! node_exporter-style `/metrics` whose CPU counters advance at a settable busy fraction, so a real
//! Prometheus can scrape it. Test controls, all request headers:
//! - `x-sim-report: 1` — answer with JSON describing what the node saw (peer address, method, path,
//!   query, headers, body);
//! - `x-sim-delay-ms: N` — wait N ms before answering (long-polls, timeouts);
//! - `x-sim-shard: V` — answer with the node's own `X-Jitsi-Shard: V`;
//! - the WebSocket text message `sim:close` — the node closes the WebSocket;
//! - the WebSocket text message `sim:hang` — the node reads nothing more of it and never
//!   closes it (a hung node).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// CPU counters that advance at a settable busy fraction, like node_exporter's.
struct Cpu {
    state: Mutex<CpuState>,
}

struct CpuState {
    since: Instant,
    idle: f64,
    busy: f64,
    fraction: f64,
}

impl Cpu {
    fn new(fraction: f64) -> Cpu {
        Cpu {
            state: Mutex::new(CpuState {
                since: Instant::now(),
                idle: 0.0,
                busy: 0.0,
                fraction,
            }),
        }
    }

    fn settle(state: &mut CpuState) {
        let elapsed = state.since.elapsed().as_secs_f64();
        state.idle += elapsed * (1.0 - state.fraction);
        state.busy += elapsed * state.fraction;
        state.since = Instant::now();
    }

    fn set(&self, fraction: f64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Cpu::settle(&mut state);
        state.fraction = fraction.clamp(0.0, 1.0);
    }

    fn counters(&self) -> (f64, f64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Cpu::settle(&mut state);
        (state.idle, state.busy)
    }
}

struct Shared {
    name: String,
    cpu: Cpu,
    healthy: std::sync::atomic::AtomicBool,
    /// Real XMPP signalling (a prosody's HTTP port) behind `/http-bind` and `/xmpp-websocket`.
    signalling: Option<super::relay::Relay>,
}

/// A running simulated node; stops when dropped.
pub struct SimNode {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls: bool,
    task: JoinHandle<()>,
}

impl SimNode {
    /// Starts a plain-HTTP node on `bind` (port 0 picks a free port).
    pub async fn start(name: &str, bind: SocketAddr) -> std::io::Result<SimNode> {
        SimNode::launch(name, bind, None, None).await
    }

    /// Starts a plain-HTTP node whose BOSH and XMPP WebSocket are relayed to a real XMPP server's
    /// HTTP port (`signalling`), and whose room page joins the room over XMPP.
    pub async fn start_with_signalling(
        name: &str,
        bind: SocketAddr,
        signalling: SocketAddr,
    ) -> std::io::Result<SimNode> {
        SimNode::launch(name, bind, None, Some(super::relay::Relay::new(signalling))).await
    }

    /// Starts an HTTPS node with this server config.
    pub async fn start_tls(
        name: &str,
        bind: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<SimNode> {
        SimNode::launch(name, bind, Some(TlsAcceptor::from(tls)), None).await
    }

    async fn launch(
        name: &str,
        bind: SocketAddr,
        tls: Option<TlsAcceptor>,
        signalling: Option<super::relay::Relay>,
    ) -> std::io::Result<SimNode> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            cpu: Cpu::new(0.1),
            healthy: std::sync::atomic::AtomicBool::new(true),
            signalling,
        });
        let is_tls = tls.is_some();
        let task = tokio::spawn(serve(listener, tls, shared.clone()));
        Ok(SimNode {
            shared,
            addr,
            tls: is_tls,
            task,
        })
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL (`http://127.0.0.1:port`).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Makes `/about/health` answer 200 (`true`) or 503 (`false`), and the simulated BOSH at
    /// `/http-bind` 200 or 502 (its signalling up or down).
    pub fn set_healthy(&self, healthy: bool) {
        self.shared
            .healthy
            .store(healthy, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sets the busy CPU fraction its `/metrics` counters report from now on.
    pub fn set_busy(&self, fraction: f64) {
        self.shared.cpu.set(fraction);
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    // Connections live in this set so that stopping the node closes them too.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        let shared = shared.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(answer(req, &shared, peer).await) }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            // A Jitsi node's nginx takes as many header fields as fit its buffers.
            builder.http1().max_headers(1000);
            let _ = match tls {
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(stream) => {
                        builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .await
                    }
                    Err(_) => return,
                },
                None => {
                    builder
                        .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                        .await
                }
            };
        });
    }
}

type SimBody = Full<Bytes>;

async fn answer(
    req: Request<Incoming>,
    shared: &Shared,
    peer: SocketAddr,
) -> Response<super::relay::Body> {
    let path = req.uri().path();
    let signalling = path.ends_with("/http-bind") || path.ends_with("/xmpp-websocket");
    match &shared.signalling {
        Some(relay) if signalling => {
            let mut response = relay.forward(req).await;
            if let Ok(name) = HeaderValue::from_str(&shared.name) {
                response.headers_mut().insert("x-sim-node", name);
            }
            response
        }
        _ => simulated(req, shared, peer)
            .await
            .map(http_body_util::Either::Left),
    }
}

async fn simulated(
    mut req: Request<Incoming>,
    shared: &Shared,
    peer: SocketAddr,
) -> Response<SimBody> {
    if let Some(ms) = header_value(&req, "x-sim-delay-ms").and_then(|v| v.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let own_shard = header_value(&req, "x-sim-shard").map(str::to_owned);
    let mut response = if is_websocket(&req) {
        websocket_echo(&mut req)
    } else if header_value(&req, "x-sim-report").is_some() {
        report(req, shared, peer).await
    } else {
        content(req, shared).await
    };
    let headers = response.headers_mut();
    if let Ok(name) = HeaderValue::from_str(&shared.name) {
        headers.insert("x-sim-node", name);
    }
    if let Some(shard) = own_shard.and_then(|s| HeaderValue::from_str(&s).ok()) {
        headers.insert("x-jitsi-shard", shard);
    }
    response
}

fn header_value<'r, B>(req: &'r Request<B>, name: &str) -> Option<&'r str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn is_websocket<B>(req: &Request<B>) -> bool {
    header_value(req, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<SimBody> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn read_body(req: Request<Incoming>) -> (http::request::Parts, Bytes) {
    let (parts, body) = req.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    (parts, bytes)
}

async fn report(req: Request<Incoming>, shared: &Shared, peer: SocketAddr) -> Response<SimBody> {
    let (parts, body) = read_body(req).await;
    let headers: BTreeMap<&str, Vec<&str>> = parts
        .headers
        .keys()
        .map(|k| {
            let values = parts
                .headers
                .get_all(k)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            (k.as_str(), values)
        })
        .collect();
    let report = serde_json::json!({
        "node": shared.name,
        "peer": peer.to_string(),
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    reply(StatusCode::OK, "application/json", report.to_string())
}

/// A stand-in for Jitsi Meet's `external_api.js`: it embeds a room as the real one does.
const EXTERNAL_API: &str = include_str!("external_api.js");

async fn content(req: Request<Incoming>, shared: &Shared) -> Response<SimBody> {
    let path = req.uri().path().to_owned();
    let room = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("room=")))
        .unwrap_or("")
        .to_owned();
    let name = &shared.name;
    match path.as_str() {
        "/about/health" if shared.healthy.load(std::sync::atomic::Ordering::Relaxed) => {
            reply(StatusCode::OK, "text/plain", "ok\n")
        }
        "/about/health" => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "unhealthy\n"),
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics(&shared.cpu),
        ),
        p if p.ends_with("/config.js") || p == "/config.js" => reply(
            StatusCode::OK,
            "application/javascript",
            // Shaped like docker-jitsi-meet's: `jitsi-router bench` reads the domains here.
            format!(
                "var config = {{}};\nconfig.hosts = {{}};\nconfig.hosts.domain = '{}';\n\
                 config.hosts.muc = '{}';\nconfig.bosh = '/http-bind';\n\
                 config.websocket = '/xmpp-websocket';\n\
                 config.simulatedNode = {name:?};\nconfig.room = {:?};\n",
                super::prosody::DOMAIN,
                super::prosody::MUC,
                escape_html(&room)
            ),
        ),
        // Signalling down, as the router's default health check sees it (`GET /http-bind`).
        p if p.ends_with("/http-bind")
            && !shared.healthy.load(std::sync::atomic::Ordering::Relaxed) =>
        {
            reply(StatusCode::BAD_GATEWAY, "text/plain", "signalling down\n")
        }
        p if p.ends_with("/http-bind") => {
            let (_, body) = read_body(req).await;
            reply(
                StatusCode::OK,
                "text/xml; charset=utf-8",
                format!("<body xmlns='http://jabber.org/protocol/httpbind' node='{name}' received='{}'/>", body.len()),
            )
        }
        // A deployment's iframe API, served from its root as jitsi-meet's nginx does.
        "/external_api.js" | "/external_api.min.js" => {
            reply(StatusCode::OK, "application/javascript", EXTERNAL_API)
        }
        "/libs/xmpp-room.js" if shared.signalling.is_some() => reply(
            StatusCode::OK,
            "application/javascript",
            super::relay::ROOM_SCRIPT,
        ),
        _ if shared.signalling.is_some() => reply(
            StatusCode::OK,
            "text/html; charset=utf-8",
            super::relay::room_page(name, &escape_html(path.trim_start_matches('/'))),
        ),
        _ => reply(
            StatusCode::OK,
            "text/html; charset=utf-8",
            room_page(name, &path),
        ),
    }
}

fn metrics(cpu: &Cpu) -> String {
    let (idle, busy) = cpu.counters();
    format!(
        "# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.\n\
         # TYPE node_cpu_seconds_total counter\n\
         node_cpu_seconds_total{{cpu=\"0\",mode=\"idle\"}} {idle:.3}\n\
         node_cpu_seconds_total{{cpu=\"0\",mode=\"user\"}} {busy:.3}\n"
    )
}

fn escape_html(text: &str) -> String {
    text.chars()
        .fold(String::with_capacity(text.len()), |mut out, c| {
            match c {
                '&' => out.push_str("&amp;"),
                '<' => out.push_str("&lt;"),
                '>' => out.push_str("&gt;"),
                '"' => out.push_str("&quot;"),
                '\'' => out.push_str("&#39;"),
                c => out.push(c),
            }
            out
        })
}

fn room_page(node: &str, path: &str) -> String {
    let room = escape_html(path.trim_start_matches('/'));
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>{room} · {node}</title>
<style>body{{font:16px system-ui,sans-serif;margin:2em;max-width:44em}}code{{background:#eee;padding:0 .3em}}</style>
</head><body>
<h1>Room <code>{room}</code> is on node <code>{node}</code></h1>
<p>This page comes from a simulated Jitsi node behind jitsi-router. Open the same room in another
tab or browser: it lands on the same node. Below, this page's signalling requests go through the router
too: <code>config.js</code> and BOSH name the node that answered, and the XMPP WebSocket echoes a message.</p>
<pre id="log"></pre>
<script>
const path = location.pathname.split('/').filter(Boolean);
const room = path.pop() || '';
// A tenant's page (`/<tenant>/<room>`) signals under its tenant, as jitsi-meet's config.js does.
const base = path.length ? '/' + path[0] : '';
const log = t => document.getElementById('log').textContent += t + '\n';
// As jitsi-meet's getBackendSafeRoomName: a name that does not decode stays as it is.
const decode = s => {{ try {{ return decodeURIComponent(s); }} catch (e) {{ return s; }} }};
const q = '?room=' + encodeURIComponent(decode(room).toLowerCase());
fetch(base + '/config.js' + q).then(r => log('config.js      → ' + r.headers.get('x-jitsi-shard')));
fetch(base + '/http-bind' + q, {{method: 'POST', body: '<body/>'}}).then(r => log('http-bind      → ' + r.headers.get('x-jitsi-shard')));
const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + base + '/xmpp-websocket' + q);
ws.onopen = () => ws.send('hello from the browser');
ws.onmessage = m => {{ log('xmpp-websocket → echoed "' + m.data + '"'); ws.close(); }};
ws.onerror = () => log('xmpp-websocket → failed');
</script>
</body></html>
"#
    )
}

fn websocket_echo(req: &mut Request<Incoming>) -> Response<SimBody> {
    let Some(key) = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| derive_accept_key(k.as_bytes()))
    else {
        return reply(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "missing Sec-WebSocket-Key\n",
        );
    };
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        // Keep reading after the peer's Close: tungstenite sends the Close reply on the next read.
        while let Some(Ok(message)) = ws.next().await {
            if message.to_text().is_ok_and(|t| t == "sim:close") {
                // Test control: the node hangs up first.
                break;
            }
            if message.to_text().is_ok_and(|t| t == "sim:hang") {
                // Test control: the node holds the connection and reads nothing more.
                let _held = ws;
                return std::future::pending::<()>().await;
            }
            if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                break;
            }
        }
        let _ = ws.close(None).await;
    });
    let mut response = reply(StatusCode::SWITCHING_PROTOCOLS, "text/plain", Bytes::new());
    let headers = response.headers_mut();
    headers.remove(header::CONTENT_TYPE);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&key) {
        headers.insert("sec-websocket-accept", accept);
    }
    response
}
