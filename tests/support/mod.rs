//! Test support: certificates (rcgen), the real router binary on random loopback ports,
//! simulated Jitsi nodes, a real Prometheus server, and HTTPS/WebSocket clients that trust the
//! test CA. Everything runs on loopback, in temporary folders, and stops when dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

pub mod browser;
pub mod nginx;
pub mod pebble;
pub mod xmpp;

use jitsi_router::demo::prometheus::PrometheusServer;
pub use jitsi_router::demo::SimNode;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The router binary under test.
pub const ROUTER: &str = env!("CARGO_BIN_EXE_jitsi-router");

/// A test CA and a `localhost` leaf it signed, written as PEM files.
pub struct Certs {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    ca_pem: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Certs {
    pub fn new() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own: OpenSSL (Redis) takes a leaf whose issuer is its own subject (rcgen's
        // default name for both) for self-signed.
        (ca_params.distinguished_name).push(DnType::CommonName, "jitsi-router test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let ca_pem = ca.pem();
        Certs {
            ca: write("ca.pem", &ca_pem),
            cert: write("fullchain.pem", &leaf.pem()),
            key: write("privkey.pem", &leaf_key.serialize_pem()),
            ca_pem,
            dir,
            issuer: ca,
        }
    }

    /// Issues a new `localhost` leaf from the same CA over the cert and key files; returns its DER.
    pub fn rotate(&self) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        std::fs::write(&self.key, key.serialize_pem()).unwrap();
        std::fs::write(&self.cert, leaf.pem()).unwrap();
        leaf.der().to_vec()
    }

    /// The DER of the certificate a TLS handshake with `addr` presents.
    pub async fn presented(&self, addr: SocketAddr) -> Vec<u8> {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(self.client_config())
            .connect(name, tcp)
            .await
            .unwrap();
        tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    }

    /// A rustls server config with the leaf (for HTTPS simulated nodes).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(&self.key).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// A rustls client config trusting the test CA (for WebSocket clients).
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.client_config_alpn(b"http/1.1")
    }

    /// A rustls client config trusting the test CA and offering one ALPN protocol.
    pub fn client_config_alpn(&self, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(config)
    }

    /// A TLS connection to `addr` from `from` (any loopback address), offering `alpn`.
    pub async fn connect_from(
        &self,
        from: std::net::IpAddr,
        addr: SocketAddr,
        alpn: &[u8],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(from, 0))?;
        let tcp = socket.connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(self.client_config_alpn(alpn))
            .connect(name, tcp)
            .await
    }

    /// A TLS connection to `addr` offering `alpn`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        alpn: &[u8],
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        self.connect_from("127.0.0.1".parse().unwrap(), addr, alpn)
            .await
            .unwrap()
    }

    fn reqwest_ca(&self) -> reqwest::Certificate {
        reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap()
    }
}

/// A loopback port nobody listens on, free to be listened on later by a process the test starts
/// (pebble, nginx, a router told its ports ahead). It comes from below the kernel's ephemeral
/// range (`net.ipv4.ip_local_port_range`, 32768 and up by default), where no `bind` to port 0
/// and no outgoing connection of another test can take it in the meantime; each call in this
/// process tries the next port from a start that differs between processes.
pub fn closed_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral.saturating_sub(LOW);
    if span < 1_000 {
        // No room below the ephemeral range on this machine: a port the kernel picks.
        return TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
    }
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let start = std::process::id().wrapping_mul(7_919)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    let _ = NEXT.compare_exchange(u32::MAX, start % span, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..span {
        let port = LOW + NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = u16::try_from(port).expect("below the ephemeral range");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port from {LOW} to {ephemeral}");
}

/// Starts `n` simulated nodes named `jitsi-a`, `jitsi-b`, …
pub async fn sim_nodes(n: usize) -> Vec<SimNode> {
    let mut nodes = Vec::new();
    for i in 0..n {
        let name = format!("jitsi-{}", (b'a' + i as u8) as char);
        nodes.push(
            SimNode::start(&name, "127.0.0.1:0".parse().unwrap())
                .await
                .unwrap(),
        );
    }
    nodes
}

/// Starts `n` prosody-backed nodes (real XMPP signalling) named `jitsi-a`, `jitsi-b`, …
pub async fn prosody_nodes(n: usize) -> Vec<jitsi_router::demo::prosody::ProsodyNode> {
    let mut nodes = Vec::new();
    for i in 0..n {
        let name = format!("jitsi-{}", (b'a' + i as u8) as char);
        let node =
            jitsi_router::demo::prosody::ProsodyNode::start(&name, "127.0.0.1:0".parse().unwrap());
        nodes.push(node.await.unwrap_or_else(|e| panic!("{e}")));
    }
    nodes
}

/// A router config text: listeners on port 0, the test certificate, `sections` verbatim, then nodes.
pub fn config(certs: &Certs, sections: &str, nodes: &[(&str, String)]) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n[tls]\ncert = {:?}\nkey = {:?}\n\n{sections}\n",
        certs.cert, certs.key
    );
    for (name, upstream) in nodes {
        text.push_str(&format!(
            "\n[[nodes]]\nname = {name:?}\nupstream = {upstream:?}\n"
        ));
    }
    text
}

/// Node entries for simulated nodes.
pub fn node_entries(nodes: &[SimNode]) -> Vec<(&str, String)> {
    nodes.iter().map(|n| (n.name(), n.url())).collect()
}

/// Asserts that no reload of `router` so far logged a change that waits for a restart.
pub fn assert_applied_live(router: &Router) {
    let logs = router.logs();
    assert!(!logs.contains("only after a restart"), "{logs}");
}

/// The real router binary, running `serve` on a config in a temporary folder.
pub struct Router {
    child: Child,
    pub https: SocketAddr,
    pub http: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    logs: Arc<Mutex<String>>,
    pub dir: tempfile::TempDir,
    ca: reqwest::Certificate,
}

/// The listener kind and address of a "listening" log line, text or JSON.
fn listening(line: &str) -> (String, SocketAddr) {
    if let Ok(event) = serde_json::from_str::<serde_json::Value>(line) {
        let field = |name: &str| {
            event["fields"][name]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        return (field("kind"), field("addr").parse().unwrap());
    }
    let kind = line
        .split("kind=\"")
        .nth(1)
        .and_then(|k| k.split('"').next())
        .unwrap_or_default();
    let addr = line
        .split("addr=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    (kind.to_owned(), addr.parse().unwrap())
}

/// A process that exited before it was ready: its status and what it printed.
#[derive(Debug)]
pub struct Failed {
    pub code: Option<i32>,
    pub stderr: String,
}

impl Router {
    pub fn start(certs: &Certs, config: &str) -> Router {
        Router::try_start(certs, config).unwrap_or_else(|f| panic!("router did not start: {f:?}"))
    }

    pub fn try_start(certs: &Certs, config: &str) -> Result<Router, Failed> {
        Router::launch(certs, config, Command::new(ROUTER))
    }

    /// Starts the router under `wrapper` (a command that runs the rest of its arguments, such
    /// as `prlimit --nofile=64:64 --`) with `env` added.
    pub fn start_under(
        certs: &Certs,
        config: &str,
        wrapper: &[&str],
        env: &[(&str, &str)],
    ) -> Router {
        let mut command = Command::new(wrapper[0]);
        command.args(&wrapper[1..]).arg(ROUTER);
        command.envs(env.iter().copied());
        Router::launch(certs, config, command)
            .unwrap_or_else(|f| panic!("router did not start: {f:?}"))
    }

    fn launch(certs: &Certs, config: &str, mut command: Command) -> Result<Router, Failed> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("router.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = command
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info,jitsi_router=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the router binary");
        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening") {
                    let _ = tx.send(line.clone());
                }
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        let wants_http = config.contains("http_listen");
        let (mut https, mut http, mut admin) = (None, None, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        while https.is_none() || admin.is_none() || (wants_http && http.is_none()) {
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                return Err(Failed {
                    code: status.code(),
                    stderr: logs.lock().unwrap().clone(),
                });
            }
            assert!(
                Instant::now() < deadline,
                "router not listening after 20 s:\n{}",
                logs.lock().unwrap()
            );
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(50)) {
                let (kind, addr) = listening(&line);
                match kind.as_str() {
                    "https" => https = Some(addr),
                    "admin" => admin = Some(addr),
                    _ => http = Some(addr),
                }
            }
        }
        Ok(Router {
            child,
            https: https.unwrap(),
            http,
            admin,
            logs,
            dir,
            ca: certs.reqwest_ca(),
        })
    }

    /// `https://localhost:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.https.port())
    }

    /// A client trusting the test CA, resolving `localhost` to the router; HTTP/2 when offered.
    pub fn client(&self) -> reqwest::Client {
        self.client_builder().build().unwrap()
    }

    /// Same, HTTP/1.1 only.
    pub fn client_h1(&self) -> reqwest::Client {
        self.client_builder().http1_only().build().unwrap()
    }

    fn client_builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .add_root_certificate(self.ca.clone())
            .resolve("localhost", self.https)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(Duration::from_secs(60))
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// `http://<admin address><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin.expect("admin listener"))
    }

    /// The JSON answer of the admin listener's `GET <path>`.
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        let response = reqwest::get(self.admin_url(path)).await.unwrap();
        response.json().await.unwrap()
    }

    /// The config file the router was started with (rewrite it to test reloads).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("router.toml")
    }

    /// The router's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The router's resident memory of its own (anonymous: what it allocated, not the pages
    /// of its binary that running code maps in), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("RssAnon:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// File descriptors the router holds open.
    pub fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|dir| dir.count())
            .unwrap_or(0)
    }

    /// Drains the node `name` through the admin API, and checks that it was answered `200`.
    pub async fn drain(&self, name: &str) {
        self.set_drain(name, true).await;
    }

    /// Drains or undrains a node through the admin API; the API's answer.
    pub async fn set_drain(&self, name: &str, drain: bool) -> serde_json::Value {
        let action = if drain { "drain" } else { "undrain" };
        let url = self.admin_url(&format!("/api/nodes/{name}/{action}"));
        let answer = reqwest::Client::new().post(url).send().await.unwrap();
        assert_eq!(answer.status(), 200, "{action} {name}");
        answer.json().await.unwrap()
    }

    /// A client trusting the test CA that reaches `localhost` at `addr` (another of the
    /// router's listeners).
    pub fn client_to(&self, addr: SocketAddr) -> reqwest::Client {
        self.client_builder()
            .resolve("localhost", addr)
            .build()
            .unwrap()
    }

    /// A client trusting the test CA that connects from `from` (any loopback address).
    pub fn client_from(&self, from: std::net::IpAddr) -> reqwest::Client {
        self.client_builder().local_address(from).build().unwrap()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends a signal (`"TERM"`, `"INT"`, `"HUP"`) to the router process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -s {name} failed");
    }

    /// Waits up to `limit` for the process to exit; its exit code, if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the router binary to completion with these arguments.
pub fn run_router(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(ROUTER)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A real Prometheus server (Debian package `prometheus`) scraping `targets` every second.
pub struct Prometheus {
    server: PrometheusServer,
    pub url: String,
}

impl Prometheus {
    pub async fn start(targets: &[SocketAddr]) -> Prometheus {
        let server = PrometheusServer::start(targets, Duration::from_secs(1))
            .await
            .unwrap_or_else(|e| {
                panic!("{e}: run the README's test command, which installs prometheus")
            });
        let url = server.url().to_owned();
        Prometheus { server, url }
    }

    /// Runs an instant query and returns value by `instance`.
    pub async fn query(&self, promql: &str) -> std::collections::HashMap<String, f64> {
        self.server.query(promql).await.unwrap()
    }

    pub fn stop(&mut self) {
        self.server.stop();
    }
}

/// Polls `check` every 100 ms until it returns true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// GET with `x-sim-report` and return the node's JSON report plus the response's shard header.
pub async fn report(client: &reqwest::Client, url: &str) -> (serde_json::Value, String) {
    let response = client
        .get(url)
        .header("x-sim-report", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{url}");
    let shard = shard(&response);
    (response.json().await.unwrap(), shard)
}

/// The `X-Jitsi-Shard` of a response.
pub fn shard(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-jitsi-shard")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// What the fake Prometheus answers.
#[derive(Clone, Debug)]
pub enum PromAnswer {
    /// A good instant vector: busy fraction by instance.
    Busy(Vec<(String, f64)>),
    /// A 200 with a body that is not Prometheus JSON.
    Garbage,
    /// A well-formed answer with a NaN in it.
    NotANumber,
    /// A well-formed answer of 20 MB: a query that gives every core and mode of every host.
    Huge,
    /// No answer for this long.
    Hang(Duration),
}

/// A stand-in for Prometheus whose answers a test controls (for failures a real one won't make).
pub struct FakePrometheus {
    pub url: String,
    answer: Arc<Mutex<PromAnswer>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakePrometheus {
    pub async fn start(first: PromAnswer) -> FakePrometheus {
        let answer = Arc::new(Mutex::new(first));
        let shared = answer.clone();
        let (url, task) = serve_http(move |_req| {
            let now = shared.lock().unwrap().clone();
            async move {
                let body = match now {
                    PromAnswer::Busy(values) => {
                        let result: Vec<String> = values
                            .iter()
                            .map(|(i, v)| format!(r#"{{"metric":{{"instance":"{i}"}},"value":[1,"{v}"]}}"#))
                            .collect();
                        format!(r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#, result.join(","))
                    }
                    PromAnswer::Garbage => "<html>not prometheus</html>".to_owned(),
                    PromAnswer::NotANumber => r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"instance":"x"},"value":[1,"NaN"]}]}}"#.to_owned(),
                    PromAnswer::Huge => {
                        // Made once: a debug build takes longer to make it than a query may.
                        static HUGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
                        HUGE.get_or_init(|| {
                            let sample = |i: usize| format!(r#"{{"metric":{{"instance":"10.1.{}.{}:9100","cpu":"{}","mode":"idle"}},"value":[1,"0.5"]}}"#, i / 256 % 256, i % 256, i % 64);
                            let result: Vec<String> = (0..200_000).map(sample).collect();
                            format!(r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#, result.join(","))
                        })
                        .clone()
                    }
                    PromAnswer::Hang(d) => {
                        tokio::time::sleep(d).await;
                        String::new()
                    }
                };
                hyper::Response::new(body)
            }
        })
        .await;
        FakePrometheus { url, answer, task }
    }

    pub fn answer(&self, answer: PromAnswer) {
        *self.answer.lock().unwrap() = answer;
    }
}

impl Drop for FakePrometheus {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A plain-HTTP/1.1 server on a loopback port answering every request with `answer`: the
/// server's `http://` URL and its task (abort it to stop).
pub async fn serve_http<F, Fut>(answer: F) -> (String, tokio::task::JoinHandle<()>)
where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = hyper::Response<String>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let reply = answer(req);
                    async move { Ok::<_, std::convert::Infallible>(reply.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (url, task)
}

/// A router in front of `n` simulated nodes, with `sections` added to its config.
pub async fn fleet(n: usize, sections: &str) -> (Certs, Vec<SimNode>, Router) {
    let certs = Certs::new();
    let nodes = sim_nodes(n).await;
    let router = Router::start(&certs, &config(&certs, sections, &node_entries(&nodes)));
    (certs, nodes, router)
}

/// Rooms per node after GETting each room page once.
pub async fn place_rooms(
    router: &Router,
    rooms: impl IntoIterator<Item = String>,
) -> std::collections::BTreeMap<String, usize> {
    let client = router.client();
    let mut per_node = std::collections::BTreeMap::new();
    for room in rooms {
        let response = client
            .get(router.url(&format!("/{room}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{room}");
        *per_node.entry(shard(&response)).or_insert(0) += 1;
    }
    per_node
}

/// Waits until the router's log contains `text`.
pub async fn log_shows(router: &Router, text: &str) {
    let what = format!("the router to log {text:?}");
    eventually(Duration::from_secs(20), &what, || async {
        router.logs().contains(text)
    })
    .await;
}

/// Config lines for nodes with their `instance` set to their address.
pub fn nodes_with_instances(nodes: &[SimNode], extra: &dyn Fn(&SimNode) -> String) -> String {
    nodes
        .iter()
        .map(|n| {
            format!(
                "\n[[nodes]]\nname = {:?}\nupstream = {:?}\ninstance = \"{}\"\n{}",
                n.name(),
                n.url(),
                n.addr(),
                extra(n)
            )
        })
        .collect()
}

/// A WebSocket client connection through the router.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `wss://localhost<path>` through the router; the socket and the node that answered.
pub async fn websocket(certs: &Certs, router: &Router, path: &str) -> (Ws, String) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let tcp = tokio::net::TcpStream::connect(router.https).await.unwrap();
    let request = format!("wss://localhost:{}{path}", router.https.port())
        .into_client_request()
        .unwrap();
    let connector = tokio_tungstenite::Connector::Rustls(certs.client_config());
    let (ws, response) =
        tokio_tungstenite::client_async_tls_with_config(request, tcp, None, Some(connector))
            .await
            .unwrap();
    let shard = response
        .headers()
        .get("x-jitsi-shard")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (ws, shard)
}

/// Sends `text` on a WebSocket to a simulated node and expects it echoed.
pub async fn echoes(ws: &mut Ws, text: &str) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::text(text)).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
}

/// The router's `/metrics`, as `name{labels}` → value (labels as the router wrote them).
pub async fn metrics(router: &Router) -> std::collections::HashMap<String, f64> {
    let text = reqwest::get(router.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// `jitsi-router demo` on a free loopback port: the process, its stdout lines from here on, and
/// the banner it printed before it started listing rooms. Stopped with SIGTERM when dropped, so
/// it can stop what it started (prosody processes).
pub struct Demo {
    child: Child,
    pub port: u16,
    pub lines: mpsc::Receiver<String>,
    pub banner: String,
}

impl Demo {
    pub fn start(extra: &[&str]) -> Demo {
        let port = closed_port();
        let mut child = Command::new(ROUTER)
            .arg("demo")
            .args(extra)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut banner = String::new();
        while !banner.contains("Ctrl-C") {
            banner.push_str(&lines.recv_timeout(Duration::from_secs(30)).unwrap());
            banner.push('\n');
        }
        Demo {
            child,
            port,
            lines,
            banner,
        }
    }

    /// SIGTERM, then waits up to `limit` for the exit; whether it exited.
    pub fn stop(&mut self, limit: Duration) -> bool {
        self.signal("TERM", limit)
    }

    /// Sends the signal `name` (`kill -s` spelling), then waits up to `limit` for the exit;
    /// whether it exited.
    pub fn signal(&mut self, name: &str, limit: Duration) -> bool {
        let _ = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Demo {
    /// The demo's child processes: pid and command line (arguments joined by spaces).
    pub fn children(&self) -> Vec<(u32, String)> {
        let parent = self.child.id();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if process_state(pid).is_some_and(|(_, ppid)| ppid == parent) {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                found.push((pid, cmdline.trim_end().to_owned()));
            }
        }
        found
    }
}

/// A process's state letter and parent pid from `/proc/<pid>/stat`; `None` once it is gone.
pub fn process_state(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces; the fields after it are plain.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether the process runs (a zombie waiting for its parent to reap it does not).
pub fn process_runs(pid: u32) -> bool {
    process_state(pid).is_some_and(|(state, _)| state != 'Z')
}

impl Drop for Demo {
    fn drop(&mut self) {
        if !self.stop(Duration::from_secs(5)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A real Redis server (Debian package `redis-server`) on a loopback port, keeping nothing on
/// disk; stopped when dropped.
pub struct Redis {
    child: Child,
    pub port: u16,
    /// For a TLS server: the CA, and the client certificate and key it accepts.
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
    _dir: tempfile::TempDir,
}

impl Redis {
    /// Starts one on a free port.
    pub async fn start() -> Redis {
        Redis::start_on(closed_port()).await
    }

    /// Starts one on `port` (a port a router was told of before anything listened there).
    pub async fn start_on(port: u16) -> Redis {
        Redis::launch(port, None, &[]).await
    }

    /// Starts a replica of `primary` on a free port (TLS, as `primary` speaks it), which
    /// Sentinel may promote; returns once it copies from `primary`.
    pub async fn start_replica_of(primary: &Redis) -> Redis {
        let mut args = vec![
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary.port.to_string(),
        ];
        if primary.tls.is_some() {
            args.extend(["--tls-replication".into(), "yes".into()]);
        }
        let replica = Redis::launch(closed_port(), primary.tls.clone(), &args).await;
        eventually(Duration::from_secs(10), "the replica to copy", || async {
            let mut connection = replica.connection().await.unwrap();
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut connection)
                .await
                .unwrap();
            info.contains("master_link_status:up")
        })
        .await;
        replica
    }

    /// Starts one that speaks only TLS, with `certs`' leaf (names `localhost` and `127.0.0.1`),
    /// and asks every client for a certificate signed by `certs`' CA (Redis's default).
    pub async fn start_tls(certs: &Certs) -> Redis {
        Redis::start_tls_on(certs, closed_port()).await
    }

    /// The same on `port` (where another one ran before: a store moved to a new CA).
    pub async fn start_tls_on(certs: &Certs, port: u16) -> Redis {
        let tls = (certs.ca.clone(), certs.cert.clone(), certs.key.clone());
        Redis::launch(port, Some(tls), &[]).await
    }

    async fn launch(
        port: u16,
        tls: Option<(PathBuf, PathBuf, PathBuf)>,
        extra: &[String],
    ) -> Redis {
        let dir = tempfile::Builder::new()
            .prefix("jitsi-router-redis-")
            .tempdir()
            .unwrap();
        let mut command = std::process::Command::new("redis-server");
        command.args(["--bind", "127.0.0.1"]);
        match &tls {
            None => command.args(["--port", &port.to_string()]),
            Some((ca, cert, key)) => command
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .arg("--tls-ca-cert-file")
                .arg(ca)
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key),
        };
        command
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(extra)
            .arg("--dir")
            .arg(dir.path());
        let child = spawn_redis_server(&mut command);
        let redis = Redis {
            child,
            port,
            tls,
            _dir: dir,
        };
        eventually(
            Duration::from_secs(10),
            "redis-server to answer",
            || async { redis.connection().await.is_ok() },
        )
        .await;
        redis
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    pub async fn connection(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis_connection(self.port, &self.tls).await
    }

    /// The answer to `command`, which must succeed.
    pub async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> T {
        let mut connection = self.connection().await.unwrap();
        command.query_async(&mut connection).await.unwrap()
    }

    /// The value of a key, if any.
    pub async fn get(&self, key: &str) -> Option<String> {
        let mut connection = self.connection().await.unwrap();
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut connection)
            .await
            .unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real Redis Cluster on loopback ports: three primaries, each serving a third of the hash
/// slots, met and agreed (`cluster_state:ok`) before this returns; each stopped when dropped.
/// With `certs`, every server speaks only TLS, to clients and to each other, as
/// [`Redis::start_tls`] does.
pub struct RedisCluster {
    pub primaries: Vec<Redis>,
    pub replicas: Vec<Redis>,
    /// Each server's port and its cluster bus port.
    buses: Vec<(u16, u16)>,
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

impl RedisCluster {
    pub async fn start(certs: Option<&Certs>) -> RedisCluster {
        let tls = certs.map(|certs| (certs.ca.clone(), certs.cert.clone(), certs.key.clone()));
        let (mut primaries, mut buses) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let (server, bus) = cluster_node(&tls).await;
            buses.push((server.port, bus));
            primaries.push(server);
        }
        let thirds = [(0, 5460), (5461, 10922), (10923, 16383)];
        for (primary, (first, last)) in primaries.iter().zip(thirds) {
            primary
                .query::<()>(
                    redis::cmd("CLUSTER")
                        .arg("ADDSLOTSRANGE")
                        .arg(first)
                        .arg(last),
                )
                .await;
        }
        let cluster = RedisCluster {
            primaries,
            replicas: Vec::new(),
            buses,
            tls,
        };
        for other in &cluster.primaries[1..] {
            cluster.meet(other).await;
        }
        cluster.agreed().await;
        cluster
    }

    /// The URL of its first primary, which a router learns the others from.
    pub fn url(&self) -> String {
        self.primaries[0].url().trim_end_matches("/0").to_owned()
    }

    /// A client of the cluster, over TLS with the test CA's client certificate for a TLS one.
    fn client(&self) -> redis::cluster::ClusterClient {
        let urls = self
            .primaries
            .iter()
            .map(|p| p.url().trim_end_matches("/0").to_owned());
        let mut builder = redis::cluster::ClusterClientBuilder::new(urls.collect::<Vec<_>>());
        if let Some((ca, cert, key)) = &self.tls {
            let read = |path: &PathBuf| std::fs::read(path).unwrap();
            builder = builder.certs(redis::TlsCertificates {
                client_tls: Some(redis::ClientTlsConfig {
                    client_cert: read(cert),
                    client_key: read(key),
                }),
                root_cert: Some(read(ca)),
            });
        }
        builder.build().unwrap()
    }

    /// The primary serving `key`'s slot.
    pub async fn primary_of(&self, key: &str) -> &Redis {
        let slot: u16 = self.primaries[0]
            .query(redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
            .await;
        &self.primaries[match slot {
            0..=5460 => 0,
            5461..=10922 => 1,
            _ => 2,
        }]
    }

    /// The value of a key, read from whichever primary serves its slot now.
    pub async fn get(&self, key: &str) -> Option<String> {
        let mut connection = self.client().get_async_connection().await.unwrap();
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut connection)
            .await
            .unwrap()
    }

    /// Promotes the replica of `primary` (`CLUSTER FAILOVER`, with the primary's agreement)
    /// and returns once it serves the primary's slots.
    pub async fn failover(&self, replica: usize) {
        let replica = &self.replicas[replica];
        replica
            .query::<()>(redis::cmd("CLUSTER").arg("FAILOVER"))
            .await;
        eventually(
            Duration::from_secs(20),
            "the replica to take over",
            || async {
                let role: Vec<redis::Value> = replica.query(&redis::cmd("ROLE")).await;
                matches!(role.first(), Some(redis::Value::BulkString(role)) if role == b"master")
            },
        )
        .await;
        self.agreed().await;
    }

    /// Adds a replica of `primary` and returns once it copies from it.
    pub async fn add_replica(&mut self, primary: usize) -> &Redis {
        let (replica, bus) = cluster_node(&self.tls).await;
        self.buses.push((replica.port, bus));
        self.meet(&replica).await;
        let id: String = self.primaries[primary]
            .query(redis::cmd("CLUSTER").arg("MYID"))
            .await;
        eventually(
            Duration::from_secs(10),
            "the replica to learn its primary",
            || async {
                let mut connection = replica.connection().await.unwrap();
                let replicated: redis::RedisResult<()> = redis::cmd("CLUSTER")
                    .arg("REPLICATE")
                    .arg(&id)
                    .query_async(&mut connection)
                    .await;
                replicated.is_ok()
            },
        )
        .await;
        eventually(Duration::from_secs(10), "the replica to copy", || async {
            let info: String = replica.query(redis::cmd("INFO").arg("replication")).await;
            info.contains("master_link_status:up")
        })
        .await;
        self.replicas.push(replica);
        self.agreed().await;
        self.replicas.last().unwrap()
    }

    async fn meet(&self, other: &Redis) {
        let &(port, bus) = self
            .buses
            .iter()
            .find(|(port, _)| *port == other.port)
            .unwrap();
        let meet = redis::cmd("CLUSTER")
            .arg("MEET")
            .arg("127.0.0.1")
            .arg(port)
            .arg(bus)
            .clone();
        self.primaries[0].query::<()>(&meet).await;
    }

    /// Waits until every server says the cluster is whole.
    async fn agreed(&self) {
        for server in self.primaries.iter().chain(&self.replicas) {
            eventually(Duration::from_secs(20), "the cluster to agree", || async {
                let info: String = server.query(redis::cmd("CLUSTER").arg("INFO")).await;
                info.contains("cluster_state:ok")
                    && info.contains(&format!(
                        "cluster_known_nodes:{}",
                        self.primaries.len() + self.replicas.len()
                    ))
            })
            .await;
        }
    }
}

/// A server in cluster mode, and its cluster bus port: a port of its own, not Redis's port +
/// 10,000, which may be out of range or another test's.
async fn cluster_node(tls: &Option<(PathBuf, PathBuf, PathBuf)>) -> (Redis, u16) {
    let bus = closed_port();
    let mut args = [
        "--cluster-enabled",
        "yes",
        "--cluster-node-timeout",
        "2000",
        "--cluster-port",
    ]
    .map(String::from)
    .to_vec();
    args.push(bus.to_string());
    if tls.is_some() {
        args.extend(["--tls-cluster", "yes", "--tls-replication", "yes"].map(String::from));
    }
    (Redis::launch(closed_port(), tls.clone(), &args).await, bus)
}

/// Starts `redis-server` as `command` says, its output discarded.
fn spawn_redis_server(command: &mut std::process::Command) -> Child {
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("redis-server: {e}: run the README's test command, which installs it")
        })
}

/// A connection to the Redis server (or sentinel) on `port`, with TLS as `tls` says (the CA,
/// and the client certificate and key).
async fn redis_connection(
    port: u16,
    tls: &Option<(PathBuf, PathBuf, PathBuf)>,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let client = match tls {
        None => redis::Client::open(format!("redis://127.0.0.1:{port}/0"))?,
        Some((ca, cert, key)) => {
            let read = |path: &PathBuf| std::fs::read(path).unwrap();
            let certificates = redis::TlsCertificates {
                client_tls: Some(redis::ClientTlsConfig {
                    client_cert: read(cert),
                    client_key: read(key),
                }),
                root_cert: Some(read(ca)),
            };
            redis::Client::build_with_tls(format!("rediss://127.0.0.1:{port}/0"), certificates)?
        }
    };
    client.get_multiplexed_async_connection().await
}

/// A real Redis Sentinel (`redis-server --sentinel`) watching one primary under a name, on a
/// free loopback port, quick to fail over: the primary counts as down after 500 ms without an
/// answer, and one sentinel's word is enough (quorum 1). It speaks TLS when the primary does,
/// with the same certificates, to its clients and to the servers.
pub struct Sentinel {
    child: Child,
    pub port: u16,
    name: String,
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    /// Starts one watching `primary`; returns once it knows `primary` and its `replicas`.
    pub async fn start(primary: &Redis, replicas: &[&Redis], name: &str) -> Sentinel {
        let dir = tempfile::Builder::new()
            .prefix("jitsi-router-sentinel-")
            .tempdir()
            .unwrap();
        let port = closed_port();
        let listen = match &primary.tls {
            None => format!("port {port}\n"),
            // `tls-replication` makes the sentinel speak TLS to the servers too.
            Some((ca, cert, key)) => format!(
                "port 0\ntls-port {port}\ntls-replication yes\ntls-ca-cert-file {}\n\
                 tls-cert-file {}\ntls-key-file {}\n",
                ca.display(),
                cert.display(),
                key.display()
            ),
        };
        // Sentinel rewrites its config file as it learns, so it lives in the folder.
        let config = dir.path().join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "bind 127.0.0.1\n{listen}dir {dir}\n\
                 sentinel monitor {name} 127.0.0.1 {primary} 1\n\
                 sentinel down-after-milliseconds {name} 500\n\
                 sentinel failover-timeout {name} 5000\n",
                dir = dir.path().display(),
                primary = primary.port,
            ),
        )
        .unwrap();
        let mut command = std::process::Command::new("redis-server");
        let child = spawn_redis_server(command.arg(&config).arg("--sentinel"));
        let sentinel = Sentinel {
            child,
            port,
            name: name.to_owned(),
            tls: primary.tls.clone(),
            _dir: dir,
        };
        eventually(
            Duration::from_secs(10),
            "the sentinel to know the primary",
            || async { sentinel.primary_port().await == Some(primary.port) },
        )
        .await;
        // It learns of replicas from the primary's INFO, which it asks for every 10 s.
        eventually(
            Duration::from_secs(25),
            "the sentinel to know the replicas",
            || async {
                let known = sentinel.replica_ports().await;
                replicas.iter().all(|r| known.contains(&r.port))
            },
        )
        .await;
        sentinel
    }

    async fn connection(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis_connection(self.port, &self.tls).await
    }

    /// The ports of the replicas this sentinel knows and finds up.
    async fn replica_ports(&self) -> Vec<u16> {
        let Ok(mut connection) = self.connection().await else {
            return Vec::new();
        };
        let replicas: Vec<std::collections::HashMap<String, String>> = redis::cmd("SENTINEL")
            .arg("replicas")
            .arg(&self.name)
            .query_async(&mut connection)
            .await
            .unwrap_or_default();
        (replicas.iter())
            .filter(|r| r.get("flags").is_some_and(|f| !f.contains("down")))
            .filter_map(|r| r.get("port")?.parse().ok())
            .collect()
    }

    /// Makes the sentinel switch the primary to a replica now (`SENTINEL FAILOVER`), with
    /// both servers up.
    pub async fn failover(&self) {
        let mut connection = self.connection().await.unwrap();
        redis::cmd("SENTINEL")
            .arg("failover")
            .arg(&self.name)
            .query_async::<()>(&mut connection)
            .await
            .unwrap();
    }

    /// The port of the primary this sentinel names now.
    pub async fn primary_port(&self) -> Option<u16> {
        let mut connection = self.connection().await.ok()?;
        let address: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.name)
            .query_async(&mut connection)
            .await
            .ok()?;
        address.map(|(_, port)| port)
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a [`RawNode`] answers a routed request (health checks always get `200 ok`).
#[derive(Debug, Clone, Copy)]
pub enum RawAnswer {
    /// `200 ok` after this long.
    After(Duration),
    /// `200` with a body of this many bytes.
    Big(usize),
    /// `200` with a body of as many bytes as the request's `bytes=` query says (2 without).
    Sized,
    /// The head of a 1,000-byte answer and three bytes of it, then nothing.
    StallAfterHead,
}

/// A node on a bare socket whose answers a test scripts; counts the connections the router
/// opened for routed requests and the routed requests.
pub struct RawNode {
    pub addr: SocketAddr,
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    pub requests: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RawNode {
    pub async fn start(answer: RawAnswer) -> RawNode {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let counts = (connections.clone(), requests.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (connections, requests) = counts.clone();
                tokio::spawn(async move {
                    let mut routed = false;
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match tcp.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        let health = head.starts_with(b"GET /http-bind ");
                        let asked: usize = String::from_utf8_lossy(&head)
                            .split_once("bytes=")
                            .and_then(|(_, rest)| {
                                rest.split(|c: char| !c.is_ascii_digit())
                                    .next()?
                                    .parse()
                                    .ok()
                            })
                            .unwrap_or(2);
                        head.clear();
                        if health {
                            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if tcp.write_all(ok).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        if !std::mem::replace(&mut routed, true) {
                            connections.fetch_add(1, Ordering::SeqCst);
                        }
                        requests.fetch_add(1, Ordering::SeqCst);
                        let written = match answer {
                            RawAnswer::After(delay) => {
                                tokio::time::sleep(delay).await;
                                tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                    .await
                            }
                            RawAnswer::Big(_) | RawAnswer::Sized => {
                                let size = match answer {
                                    RawAnswer::Big(size) => size,
                                    _ => asked,
                                };
                                let head =
                                    format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n");
                                let mut answer = head.into_bytes();
                                answer.resize(answer.len() + size, b'x');
                                tcp.write_all(&answer).await
                            }
                            RawAnswer::StallAfterHead => {
                                let _ = tcp
                                    .write_all(
                                        b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nabc",
                                    )
                                    .await;
                                std::future::pending::<()>().await;
                                Ok(())
                            }
                        };
                        if written.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        RawNode {
            addr,
            connections,
            requests,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for RawNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads from `stream` until it closes (`true`) or `limit` passes (`false`), keeping what came.
pub async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> (Vec<u8>, bool) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (got, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// The client preface of an HTTP/2 connection and an empty SETTINGS frame.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// One HEADERS frame (END_STREAM, END_HEADERS) for `GET https://localhost<path>` on `stream`,
/// with `extra` fields, HPACK-encoded without Huffman or indexing: for tests that must send what
/// a well-behaved client library refuses to, or read exactly what the router answers.
pub fn h2_get(stream: u32, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    fn string(block: &mut Vec<u8>, text: &str) {
        assert!(
            text.len() < 127,
            "{text} is too long for a one-byte HPACK length"
        );
        block.push(text.len() as u8);
        block.extend_from_slice(text.as_bytes());
    }
    // :method GET and :scheme https from the static table, then :path and :authority by name.
    let mut block = vec![0x82, 0x87, 0x04];
    string(&mut block, path);
    block.push(0x01);
    string(&mut block, "localhost");
    for (name, value) in extra {
        block.push(0x00);
        string(&mut block, name);
        string(&mut block, value);
    }
    let mut frame = (block.len() as u32).to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[0x1, 0x5]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(&block);
    frame
}

/// An HTTP/2 frame as read off the wire.
#[derive(Debug)]
pub struct H2Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl H2Frame {
    pub const HEADERS: u8 = 1;
    pub const RST_STREAM: u8 = 3;
    pub const GOAWAY: u8 = 7;

    /// The error code of a RST_STREAM or GOAWAY frame.
    pub fn error_code(&self) -> u32 {
        let at = if self.kind == Self::GOAWAY { 4 } else { 0 };
        let code = self.payload.get(at..at + 4).expect("an error code");
        u32::from_be_bytes(code.try_into().unwrap())
    }
}

/// The frames in `bytes`, the plaintext a server sent on an HTTP/2 connection.
pub fn h2_frames(bytes: &[u8]) -> Vec<H2Frame> {
    let mut frames = Vec::new();
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let length = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
        let stream = u32::from_be_bytes(bytes[at + 5..at + 9].try_into().unwrap()) & 0x7fff_ffff;
        let end = (at + 9 + length).min(bytes.len());
        frames.push(H2Frame {
            kind: bytes[at + 3],
            flags: bytes[at + 4],
            stream,
            payload: bytes[at + 9..end].to_vec(),
        });
        at += 9 + length;
    }
    frames
}

/// A metric's value, 0 when absent.
pub async fn metric(router: &Router, series: &str) -> f64 {
    metrics(router).await.get(series).copied().unwrap_or(0.0)
}
