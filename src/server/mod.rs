//! Listeners and accept loops: HTTPS (h2 and HTTP/1.1 over rustls) for clients, an optional
//! plain-HTTP listener that answers `308` to the same URL on HTTPS, and the admin listener.
//! Every accepted connection is counted against the caps ([`caps`]) and watched for the time
//! limits of its state ([`conn`]); an HTTPS connection (`https`) is then served on one of the worker
//! threads (`workers`), one per core. Also starts the background work the router needs: the
//! Prometheus poller, health checks, the pin sweeper.

pub mod caps;
pub mod conn;
mod https;
mod listener;
mod parse_errors;
mod proxy_header;
mod sweeps;
mod to_https;
mod workers;

use https::{accept_https, connection_builder, HYPER_MAX_HEADERS};
use to_https::Challenges;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::pin::Pin;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::acme::{AcmeError, Http01Answers, Issuer};
use crate::config::{self, Config, Limits};
use crate::fleet::{health, prometheus, Fleet};
use crate::placement::pins::Pins;
use crate::placement::shared::SharedPins;
use crate::placement::{snapshot, Router};
use crate::proxy::Proxy;
use crate::throttle::Throttle;
use crate::tls::{self, CertStore, TlsError};
use caps::{Admitted, Connections};
use conn::{supervise, Activity, ConnLimits, Graceful, Tracked, Watched};
use listener::{Edge, Listener};
use sweeps::{close_idle_connections, sweep_pins};
use workers::Workers;

/// Why the router could not start; each is one line for stderr.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Certificate, key or upstream CA trouble.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The health checker's client could not be built.
    #[error(transparent)]
    HealthClient(#[from] health::ClientError),
    /// The shared pin store cannot be used.
    #[error("pins.redis: {0}")]
    SharedPins(String),
    /// The ACME state folder or client cannot be set up.
    #[error(transparent)]
    Acme(#[from] AcmeError),
    /// The threads that serve client connections could not be started.
    #[error("cannot start the worker threads: {0}")]
    Workers(std::io::Error),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}{}", bind_hint(*addr, source))]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A router whose listeners are bound and whose certificate is loaded, ready to [`run`](Self::run).
pub struct Server {
    https: Vec<TcpListener>,
    http: Option<TcpListener>,
    admin: TcpListener,
    proxy: Arc<Proxy>,
    certs: Arc<CertStore>,
    health_client: reqwest::Client,
    census_client: reqwest::Client,
    connections: Arc<Connections>,
    admin_connections: Arc<Connections>,
    /// Issues and renews the certificate, with `[tls.acme]`.
    issuer: Option<Issuer>,
    /// Answers to open ACME HTTP-01 challenges, for the plain-HTTP listener.
    http01: Arc<Http01Answers>,
    /// The threads that serve HTTPS connections.
    workers: Arc<Workers>,
    /// The cap on client connections without `limits.max_connections`, by the open-file limit.
    default_max_connections: usize,
    config: Config,
}

/// The admin listener's own caps: it serves operators and their dashboards, not the public.
const ADMIN_CONNECTIONS: usize = 256;

impl Server {
    /// Loads the certificate, builds the routing core and binds every listener.
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        let certs = Arc::new(match &config.tls.acme {
            Some(_) => CertStore::empty(),
            None => CertStore::new(tls::load_certified_key(&config.tls.cert, &config.tls.key)?),
        });
        let router = routing_core(&config).await?;
        let proxy = Arc::new(Proxy::new(router, &config)?);
        let http01 = Arc::new(Http01Answers::default());
        let issuer = match &config.tls.acme {
            Some(acme) => {
                let metrics = proxy.metrics().clone();
                Some(Issuer::new(
                    acme.clone(),
                    certs.clone(),
                    http01.clone(),
                    metrics,
                )?)
            }
            None => None,
        };
        let health_client = health::client(config.upstream.ca.as_deref())?;
        let census_client = health::client(config.upstream.ca.as_deref())?;
        let all: Vec<SocketAddr> = (config.server.listen.iter().copied())
            .chain(config.server.http_listen)
            .chain([config.server.admin_listen])
            .collect();
        let listen = |addr| listen(addr, &all);
        let mut https = Vec::with_capacity(config.server.listen.len());
        for &addr in &config.server.listen {
            https.push(listen(addr)?);
        }
        let http = match config.server.http_listen {
            Some(addr) => Some(listen(addr)?),
            None => None,
        };
        let admin = listen(config.server.admin_listen)?;
        let (max, default_max_connections) = connection_cap(&config.limits);
        let connections = Arc::new(Connections::new(
            max,
            config.limits.max_connections_per_client,
            Some(proxy.metrics().clone()),
        ));
        let admin_connections =
            Arc::new(Connections::new(ADMIN_CONNECTIONS, ADMIN_CONNECTIONS, None));
        let workers = Arc::new(Workers::per_core().map_err(StartError::Workers)?);
        Ok(Server {
            https,
            http,
            admin,
            proxy,
            certs,
            health_client,
            census_client,
            connections,
            admin_connections,
            issuer,
            http01,
            workers,
            default_max_connections,
            config,
        })
    }

    /// The bound HTTPS addresses (useful with port 0).
    pub fn https_addrs(&self) -> Vec<SocketAddr> {
        self.https
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The bound plain-HTTP address, if any.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.local_addr().ok()
    }

    /// The routing core, for observers (demo console, later the admin API).
    pub fn router(&self) -> &Arc<Router> {
        self.proxy.router()
    }

    /// The certificate store, for reloads.
    pub fn certs(&self) -> &Arc<CertStore> {
        &self.certs
    }

    /// Serves until `shutdown` completes, then shuts down gracefully: listeners close at once,
    /// requests in flight and WebSocket tunnels get up to `shutdown_grace` to finish. A second
    /// Ctrl-C or SIGTERM during that time ends it at once.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let admin_settings = Arc::new(ArcSwap::from_pointee(self.config.admin.clone()));
        let mut tasks = self.start_background(&admin_settings);
        let ending = Ending {
            grace: self.config.server.shutdown_grace,
            proxy: self.proxy.clone(),
            connections: self.connections.clone(),
            admin_connections: self.admin_connections.clone(),
            snapshot_path: self.config.pins.snapshot_path.clone(),
            workers: self.workers.clone(),
        };
        let (stop, stopping) = watch::channel(false);
        let accepting = self.accept(stopping, admin_settings, &mut tasks);
        shutdown.await;
        ending.finish(accepting, stop, tasks).await;
    }

    /// Starts the work that runs beside the listeners: CPU readings, health checks, limits
    /// and config reloads, the census, the shared pin store, and the sweeps.
    fn start_background(&self, admin_settings: &Arc<ArcSwap<config::Admin>>) -> JoinSet<()> {
        let mut tasks = JoinSet::new();
        let metrics = self.proxy.metrics().clone();
        let router = self.proxy.router();
        tasks.spawn(prometheus::run(router.fleet().clone(), metrics.clone()));
        tasks.spawn(health::run(
            router.fleet().clone(),
            self.health_client.clone(),
            metrics.clone(),
        ));
        let limits = watch::Sender::new(Arc::new(self.config.limits.clone()));
        tasks.spawn(apply_limits(
            limits.subscribe(),
            self.connections.clone(),
            self.proxy.clone(),
            self.default_max_connections,
        ));
        if let Some(reloader) = crate::reload::Reloader::new(
            self.config.clone(),
            router.clone(),
            self.certs.clone(),
            metrics,
            admin_settings.clone(),
            limits,
        ) {
            tasks.spawn(reloader.run());
        }
        let room_limits = self.proxy.room_limits();
        tasks.spawn(
            router
                .clone()
                .run_census(self.census_client.clone(), room_limits),
        );
        if router.shared_pins().is_some() {
            tasks.spawn(router.clone().run_shared());
        }
        tasks.spawn(sweep_pins(
            router.clone(),
            self.config.routing.pin_idle_timeout,
        ));
        tasks.spawn(close_idle_connections(
            self.proxy.clone(),
            self.config.upstream.pool_idle_timeout,
        ));
        tasks
    }

    /// Starts the accept loops of every listener (and ACME's issuer, into `tasks`).
    fn accept(
        self,
        stopping: watch::Receiver<bool>,
        admin_settings: Arc<ArcSwap<config::Admin>>,
        tasks: &mut JoinSet<()>,
    ) -> JoinSet<()> {
        let mut accepting = JoinSet::new();
        // With `listen = "...:0"` the configured port says nothing; use the bound one.
        let https_port = self.https_addrs().first().map_or(443, |a| a.port());
        let listener = Listener {
            limits: ConnLimits::of(&self.config.limits),
            connections: self.connections.clone(),
            metrics: self.proxy.metrics().clone(),
            stopping,
            edge: Arc::new(Edge::of(&self.config)),
        };
        let acme_alpn = (self.config.tls.acme.as_ref())
            .is_some_and(|acme| acme.challenge == crate::config::Challenge::TlsAlpn01);
        let sessions = self.config.limits.tls_sessions;
        let tls = tls::server_config(self.certs.clone(), acme_alpn, sessions);
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        if let Some(issuer) = self.issuer {
            tasks.spawn(issuer.run());
        }
        let builder = Arc::new(connection_builder(&self.config));
        for https in self.https {
            log_listening("https", &https);
            accepting.spawn(accept_https(
                https,
                acceptor.clone(),
                builder.clone(),
                self.proxy.clone(),
                self.config.limits.tls_handshake_timeout,
                listener.clone(),
                self.workers.clone(),
            ));
        }
        if let Some(http) = self.http {
            log_listening("http", &http);
            let port = (self.config.server.public_https_port).unwrap_or(https_port);
            let challenges = Arc::new(Challenges {
                answers: self.http01.clone(),
                webroot: self.config.server.acme_webroot.clone(),
            });
            accepting.spawn(accept_http(http, port, challenges, listener.clone()));
        }
        log_listening("admin", &self.admin);
        let acme = self.config.tls.acme.is_some();
        let admin = crate::admin::Admin::new(&self.proxy, admin_settings, self.certs.clone(), acme);
        let admin_listener = Listener {
            connections: self.admin_connections.clone(),
            edge: Arc::new(Edge {
                proxy_protocol: false,
                ..Edge::of(&self.config)
            }),
            ..listener
        };
        accepting.spawn(accept_admin(self.admin, Arc::new(admin), admin_listener));
        accepting
    }
}

/// What a shutdown needs once the listeners have their parts of the server.
struct Ending {
    grace: Duration,
    proxy: Arc<Proxy>,
    connections: Arc<Connections>,
    admin_connections: Arc<Connections>,
    snapshot_path: Option<PathBuf>,
    /// The threads whose runtimes serve the open connections: dropped earlier, they would end
    /// those connections at once instead of after the grace period.
    workers: Arc<Workers>,
}

impl Ending {
    /// Closes the listeners, gives open connections and tunnels up to the grace period (or
    /// until a second signal), stops the background work and saves the pins.
    async fn finish(
        self,
        mut accepting: JoinSet<()>,
        stop: watch::Sender<bool>,
        mut tasks: JoinSet<()>,
    ) {
        let grace = self.grace;
        tracing::info!(grace = ?grace, "shutting down: no new connections, waiting for open ones");
        accepting.shutdown().await;
        let _ = stop.send(true);
        let tunnels = self.proxy.tunnels().clone();
        let (connections, admin_connections) = (&self.connections, &self.admin_connections);
        let drained = async move {
            connections.all_closed().await;
            admin_connections.all_closed().await;
            tunnels.idle().await;
        };
        tokio::select! {
            finished = tokio::time::timeout(grace, drained) => match finished {
                Ok(()) => tracing::info!("all connections closed"),
                Err(_) => tracing::warn!(open_tunnels = self.proxy.tunnels().count(), "grace period over; closing the rest"),
            },
            () = crate::server_shutdown_signal() => tracing::warn!("second signal: stopping now"),
        }
        tasks.shutdown().await;
        if let Some(path) = &self.snapshot_path {
            match snapshot::save(self.proxy.router(), path) {
                Ok(count) => tracing::info!(count, file = %path.display(), "pins saved"),
                Err(e) => tracing::error!(error = %e, "pins not saved"),
            }
        }
        // Only now may the worker threads go, with what the grace period left open.
        drop(self.workers);
    }
}

/// The fleet, the pin table (restored from its snapshot) and the router over them, sharing
/// pins through Redis with `[pins.redis]`.
async fn routing_core(config: &Config) -> Result<Arc<Router>, StartError> {
    let fleet = Arc::new(Fleet::new(config.nodes.clone(), Duration::MAX));
    fleet.set_health(config.health.clone());
    fleet.set_prometheus(config.prometheus.clone());
    let pins = Pins::new(config.routing.pin_idle_timeout, config.limits.max_pins);
    let pins = Arc::new(pins);
    let router = Arc::new(Router::new(fleet, pins, config.placement));
    router.set_census(config.census.clone());
    if let Some(shared) = &config.pins.redis {
        let shared = SharedPins::new(shared, config.routing.pin_idle_timeout)
            .map_err(|e| StartError::SharedPins(e.to_string()))?;
        // Serving before Redis answers would place the first rooms alone; try once first.
        if let Err(e) = shared.connect(false).await {
            tracing::warn!(error = %e, "shared pin store not reachable at start; placing rooms alone until it is");
        }
        router.share_pins(Arc::new(shared));
    }
    if let Some(path) = &config.pins.snapshot_path {
        match snapshot::load(&router, path) {
            Ok(count) => tracing::info!(count, file = %path.display(), "pins restored"),
            // Starting with no pins is better than not starting; say so loudly.
            Err(e) => {
                tracing::error!(error = %e, "pin snapshot not restored; starting with no pins")
            }
        }
    }
    Ok(router)
}

/// Raises the open-file limit and settles the cap on client connections, logging both; the
/// cap and the default it had without `limits.max_connections`.
fn connection_cap(limits: &Limits) -> (usize, usize) {
    let open_files = caps::raise_open_file_limit();
    let default = open_files.map_or(usize::MAX, caps::default_max_connections);
    let max = max_connections(limits, default);
    match open_files {
        Some(open_files) => tracing::info!(
            open_files,
            max_connections = max,
            "open-file limit raised to the hard limit"
        ),
        None => tracing::warn!(max_connections = max, "open-file limit unknown"),
    }
    (max, default)
}

/// The cap on client connections by `limits` (at start and at each reload), warning of one
/// above `default`, what the open-file limit leaves room for.
fn max_connections(limits: &Limits, default: usize) -> usize {
    let max = limits.max_connections.unwrap_or(default);
    if max > default {
        tracing::warn!(
            max_connections = max,
            "limits.max_connections leaves less than half the open-file limit for connections to nodes; raise LimitNOFILE"
        );
    }
    max
}

/// Applies the keys of each reloaded `[limits]` that need no restart: the caps on client
/// connections, the new-room rate per client and the pin table's size. Runs until dropped.
async fn apply_limits(
    mut changes: watch::Receiver<Arc<Limits>>,
    connections: Arc<Connections>,
    proxy: Arc<Proxy>,
    default_max: usize,
) {
    while changes.changed().await.is_ok() {
        let limits = changes.borrow_and_update().clone();
        let max = max_connections(&limits, default_max);
        connections.set_caps(max, limits.max_connections_per_client);
        proxy.set_new_room_rate(limits.new_rooms_per_second, limits.new_room_burst);
        proxy.router().pins().set_max(limits.max_pins);
    }
}

/// What to do about a listener that could not be bound, for the two causes a new install meets.
fn bind_hint(addr: SocketAddr, error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::PermissionDenied if addr.port() < 1024 => {
            " (ports below 1024 need root or CAP_NET_BIND_SERVICE: AmbientCapabilities=CAP_NET_BIND_SERVICE in a systemd unit, or setcap cap_net_bind_service=+ep on the binary)"
        }
        std::io::ErrorKind::AddrInUse => {
            " (another process listens there: `ss -ltnp` names it)"
        }
        std::io::ErrorKind::AddrNotAvailable => " (no interface of this host has that address)",
        _ => "",
    }
}

/// Binds the listener on `addr`, one of the router's listeners `all`.
fn listen(addr: SocketAddr, all: &[SocketAddr]) -> Result<TcpListener, StartError> {
    listener::bind(addr, listener::needs_v6_only(addr, all))
        .map_err(|source| StartError::Bind { addr, source })
}

fn log_listening(kind: &str, listener: &TcpListener) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(kind, addr = %addr, "listening");
    }
}

/// A plain HTTP/1.1 connection on `tcp` answered by `answer`, watched like every client
/// connection.
async fn serve_plain<F, Fut>(
    tcp: TcpStream,
    peer: SocketAddr,
    admitted: Admitted,
    shared: Listener,
    answer: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Send + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let activity = Activity::new(false, shared.limits, shared.metrics.clone());
    let io = TokioIo::new(Watched::new(tcp, activity.clone(), admitted));
    let requests = activity.clone();
    let answer = Arc::new(answer);
    let service = service_fn(move |req: Request<Incoming>| {
        let in_flight = requests.request_started();
        let answer = answer.clone();
        async move { Ok::<_, Infallible>(answer(req).await.map(|body| Tracked::new(body, in_flight))) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(shared.limits.head.max_request_head + 2048);
    let max = shared.limits.head.max_request_headers;
    if max != HYPER_MAX_HEADERS {
        builder.max_headers(max);
    }
    let conn = builder.serve_connection(io, service);
    if let Err(e) = supervise(conn, &activity, shared.stopping).await {
        tracing::debug!(%peer, error = %e, "plain http connection ended with an error");
    }
}

async fn accept_http(
    listener: TcpListener,
    https_port: u16,
    challenges: Arc<Challenges>,
    shared: Listener,
) {
    let warned = Throttle::default();
    loop {
        let (mut tcp, peer, mut admitted) = shared.accept(&listener, &warned).await;
        let shared = shared.clone();
        let challenges = challenges.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + shared.edge.handshake_timeout;
            let Some(client) = shared.client(&mut tcp, peer, &mut admitted, deadline).await else {
                return;
            };
            serve_plain(tcp, client.addr, admitted, shared, move |req| {
                let challenges = challenges.clone();
                async move { to_https::answer(&req, https_port, &challenges).await }
            })
            .await;
        });
    }
}

async fn accept_admin(listener: TcpListener, admin: Arc<crate::admin::Admin>, shared: Listener) {
    let warned = Throttle::default();
    loop {
        let (tcp, peer, admitted) = shared.accept(&listener, &warned).await;
        let Ok(local) = tcp.local_addr() else {
            continue;
        };
        let admin = admin.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            serve_plain(tcp, peer, admitted, shared, move |req| {
                let admin = admin.clone();
                async move { admin.handle(req, local).await }
            })
            .await;
        });
    }
}

impl<I, S, E, B> Graceful for auto::UpgradeableConnection<'_, I, S, E>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: auto::HttpServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        auto::UpgradeableConnection::graceful_shutdown(self);
    }
}

impl<I, S, B> Graceful for hyper::server::conn::http1::Connection<I, S>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http1::Connection::graceful_shutdown(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_privileged_port_denied_names_the_capability() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let error = StartError::Bind {
            addr: "0.0.0.0:443".parse().unwrap(),
            source: denied,
        };
        let text = error.to_string();
        assert!(text.starts_with("cannot listen on 0.0.0.0:443: "), "{text}");
        assert!(text.contains("CAP_NET_BIND_SERVICE"), "{text}");
        let high = StartError::Bind {
            addr: "0.0.0.0:8443".parse().unwrap(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        assert!(!high.to_string().contains("CAP_NET_BIND_SERVICE"));
    }
}
