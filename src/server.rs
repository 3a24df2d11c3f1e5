//! Listeners and accept loops: HTTPS (h2 and HTTP/1.1 over rustls) for clients, and an optional
//! plain-HTTP listener that answers `308` to the same URL on HTTPS. Also starts the background
//! work the router needs: the Prometheus poller and the pin sweeper.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::fleet::{health, prometheus, Fleet};
use crate::placement::pins::MemoryPins;
use crate::placement::shared::SharedPins;
use crate::placement::{snapshot, Router};
use crate::proxy::Proxy;
use crate::tls::{self, CertStore, TlsError};

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
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
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
    config: Config,
}

impl Server {
    /// Loads the certificate, builds the routing core and binds every listener.
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        let key = tls::load_certified_key(&config.tls.cert, &config.tls.key)?;
        let certs = Arc::new(CertStore::new(key));
        let staleness = config
            .prometheus
            .as_ref()
            .map_or(Duration::MAX, |p| p.max_staleness);
        let fleet = Arc::new(Fleet::new(config.nodes.clone(), staleness));
        let pins = Arc::new(MemoryPins::new(config.routing.pin_idle_timeout));
        let router = Arc::new(Router::new(fleet, pins, config.placement));
        if let Some(shared) = &config.shared_pins {
            let shared = SharedPins::new(shared, config.routing.pin_idle_timeout)
                .map_err(|e| StartError::SharedPins(e.to_string()))?;
            // Serving before Redis answers would place the first rooms alone; try once first.
            if let Err(e) = shared.connect().await {
                tracing::warn!(error = %e, "shared pin store not reachable at start; placing rooms alone until it is");
            }
            router.share_pins(Arc::new(shared));
        }
        if let Some(path) = &config.pins_snapshot {
            match snapshot::load(&router, path) {
                Ok(count) => tracing::info!(count, file = %path.display(), "pins restored"),
                // Starting with no pins is better than not starting; say so loudly.
                Err(e) => {
                    tracing::error!(error = %e, "pin snapshot not restored; starting with no pins")
                }
            }
        }
        let proxy = Arc::new(Proxy::new(router, &config)?);
        let health_client = health::client(&config.health, config.upstream.ca.as_deref())?;
        let mut https = Vec::with_capacity(config.server.listen.len());
        for &addr in &config.server.listen {
            https.push(listen(addr).await?);
        }
        let http = match config.server.http_listen {
            Some(addr) => Some(listen(addr).await?),
            None => None,
        };
        let admin = listen(config.server.admin_listen).await?;
        Ok(Server {
            https,
            http,
            admin,
            proxy,
            certs,
            health_client,
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
        let mut tasks = tokio::task::JoinSet::new();
        let mut accepting = tokio::task::JoinSet::new();
        let graceful = Arc::new(GracefulShutdown::new());
        if let Some(cfg) = self.config.prometheus.clone() {
            tracing::info!(url = %cfg.url, interval = ?cfg.interval, "reading node CPU from prometheus");
            tasks.spawn(prometheus::poll(
                self.proxy.router().fleet().clone(),
                cfg,
                self.proxy.metrics().clone(),
            ));
        }
        let fleet = self.proxy.router().fleet().clone();
        tasks.spawn(health::run(
            fleet,
            self.health_client.clone(),
            self.config.health.clone(),
        ));
        let fleet = self.proxy.router().fleet().clone();
        if let Some(reloader) = crate::reload::Reloader::new(
            self.config.clone(),
            fleet,
            self.certs.clone(),
            self.proxy.metrics().clone(),
        ) {
            tasks.spawn(reloader.run());
        }
        if let Some(shared) = self.proxy.router().shared_pins() {
            tasks.spawn(shared.clone().run(self.proxy.router().clone()));
        }
        tasks.spawn(sweep_pins(
            self.proxy.router().clone(),
            self.config.routing.pin_idle_timeout,
        ));
        tasks.spawn(close_idle_connections(
            self.proxy.clone(),
            self.config.upstream.pool_idle_timeout,
        ));
        // With `listen = "...:0"` the configured port says nothing; use the bound one.
        let https_port = self.https_addrs().first().map_or(443, |a| a.port());
        let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(self.certs.clone())));
        let builder = Arc::new(connection_builder(&self.config));
        for listener in self.https {
            log_listening("https", &listener);
            accepting.spawn(accept_https(
                listener,
                acceptor.clone(),
                builder.clone(),
                self.proxy.clone(),
                self.config.limits.tls_handshake_timeout,
                graceful.clone(),
            ));
        }
        if let Some(listener) = self.http {
            log_listening("http", &listener);
            let port = match self.config.server.public_https_port {
                0 => https_port,
                port => port,
            };
            accepting.spawn(accept_http(listener, port, graceful.clone()));
        }
        log_listening("admin", &self.admin);
        let admin = Arc::new(crate::admin::Admin::new(&self.proxy, &self.config.admin));
        accepting.spawn(crate::admin::serve(self.admin, admin, graceful.clone()));
        shutdown.await;
        let grace = self.config.server.shutdown_grace;
        tracing::info!(grace = ?grace, "shutting down: no new connections, waiting for open ones");
        accepting.shutdown().await;
        let tunnels = self.proxy.tunnels().clone();
        let drained = async move {
            // Only the accept loops held other references, and they are gone.
            if let Ok(graceful) = Arc::try_unwrap(graceful) {
                graceful.shutdown().await;
            }
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
        if let Some(path) = &self.config.pins_snapshot {
            match snapshot::save(self.proxy.router(), path) {
                Ok(count) => tracing::info!(count, file = %path.display(), "pins saved"),
                Err(e) => tracing::error!(error = %e, "pins not saved"),
            }
        }
    }
}

async fn listen(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

fn log_listening(kind: &str, listener: &TcpListener) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(kind, addr = %addr, "listening");
    }
}

fn connection_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    // hyper answers a bare 431 past its buffer; keep it well above our own limit so clients
    // normally get our 431 with a reason.
    let buffer = (config.limits.max_request_head * 4).max(16 * 1024);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .max_buf_size(buffer);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(buffer).unwrap_or(u32::MAX));
    builder
}

/// Accept errors such as EMFILE must not spin or kill the loop.
async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(conn) => return conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn accept_https(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    builder: Arc<auto::Builder<TokioExecutor>>,
    proxy: Arc<Proxy>,
    handshake_timeout: Duration,
    graceful: Arc<GracefulShutdown>,
) {
    loop {
        let (tcp, peer) = accept(&listener).await;
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        let proxy = proxy.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "tls handshake failed");
                    proxy.metrics().tls_handshake_failed();
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "tls handshake timed out");
                    proxy.metrics().tls_handshake_failed();
                    return;
                }
            };
            let service = service_fn(move |req: Request<Incoming>| {
                let proxy = proxy.clone();
                async move { Ok::<_, Infallible>(proxy.handle(req, peer).await) }
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

async fn accept_http(listener: TcpListener, https_port: u16, graceful: Arc<GracefulShutdown>) {
    loop {
        let (tcp, peer) = accept(&listener).await;
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| async move {
                Ok::<_, Infallible>(to_https(&req, https_port))
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(tcp), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "http connection ended with an error");
            }
        });
    }
}

/// `308` to the same URL on HTTPS.
fn to_https(req: &Request<Incoming>, https_port: u16) -> Response<Full<Bytes>> {
    let answer = |status: StatusCode, text: String, location: Option<HeaderValue>| {
        let mut response = Response::new(Full::new(Bytes::from(text)));
        *response.status_mut() = status;
        if let Some(location) = location {
            response.headers_mut().insert(header::LOCATION, location);
        }
        response
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok());
    let Some(host) = host else {
        return answer(
            StatusCode::BAD_REQUEST,
            "missing or invalid Host header\n".into(),
            None,
        );
    };
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let location = format!("https://{}{port}{target}", host.host());
    match HeaderValue::from_str(&location) {
        Ok(value) => answer(
            StatusCode::PERMANENT_REDIRECT,
            format!("use {location}\n"),
            Some(value),
        ),
        Err(_) => answer(
            StatusCode::BAD_REQUEST,
            "request target cannot be redirected\n".into(),
            None,
        ),
    }
}

/// Runs `sweep` every half of `idle` (between 0.1 s and a minute), so that nothing stays more
/// than half as long again as its idle timeout.
async fn every_half(idle: Duration, mut sweep: impl FnMut()) {
    let period = (idle / 2).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        sweep();
    }
}

async fn close_idle_connections(proxy: Arc<Proxy>, idle: Duration) {
    every_half(idle, || {
        let closed = proxy.close_idle_connections();
        if closed > 0 {
            tracing::debug!(closed, "idle upstream connections closed");
        }
    })
    .await;
}

async fn sweep_pins(router: Arc<Router>, idle: Duration) {
    every_half(idle, || {
        let dropped = router.sweep();
        if dropped > 0 {
            tracing::debug!(
                dropped,
                remaining = router.pins().len(),
                "idle pins forgotten"
            );
        }
    })
    .await;
}
