//! Reloading the config file and certificates in place: on SIGHUP, or when the config, certificate
//! or key file changes on disk (checked every two seconds).
//!
//! A reload reads and checks everything first — the whole config, then the certificate and key —
//! and applies only if all of it is good, so a bad edit never leaves a half-applied state: the
//! running config stays and the reason is logged. What applies live: the node list (new nodes take
//! rooms, removed nodes' rooms move on their next request, `drain` flags), the certificate (new
//! handshakes use it; open connections and WebSocket tunnels keep going), the TLS files of
//! `[pins.redis]` when they changed (the next connection to Redis uses them), `[placement]` (the
//! next new room is placed by it), `[health]`, `[census]` and `[prometheus]` (a round by the
//! new settings starts at once; a `[prometheus]` taken out forgets its readings), `[admin]`
//! (a rotated token is asked for from the next admin request on), and the caps and rates of
//! `[limits]` (`max_connections`, `max_connections_per_client`, `new_rooms_per_second`,
//! `new_room_burst`, `max_pins`: the next connection or new room is held to them; connections
//! and pins already over a lowered cap stay). Other sections, and the rest of `[limits]`, need
//! a restart; a reload that changes them says which.
//!
//! DESIGN note. `[health]`, `[prometheus]` and `[placement]` are the sections an operator most
//! often gets wrong on a live fleet (a health path the nodes do not serve takes every node out,
//! a query that matches no node leaves placement blind), and a restart to fix them would cut
//! every open WebSocket tunnel, so they apply live with `[census]`, and with `[admin]`, whose
//! token an operator rotates. So do the per-client caps and rates, which an operator tightens
//! while a client floods the router, and the pin table's size; each is a number its part reads
//! at the next connection or room. The listeners, the sizes and timeouts of a connection, the
//! upstream client and the pin store stay read at start: each is built into a long-lived part
//! (sockets, hyper's connection builder, clients, a connection) that a reload would have to
//! rebuild under traffic.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::{Admin, Config, Limits};
use crate::metrics::Metrics;
use crate::placement::shared::{Renewed, SharedPins};
use crate::placement::Router;
use crate::rounds;
use crate::tls::{self, CertStore};

/// How often files are checked for changes.
const POLL: Duration = Duration::from_secs(2);

/// What a file looked like when last read: a change of either means "read it again".
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Option<(SystemTime, u64)>);

impl Stamp {
    fn of(path: &Path) -> Stamp {
        Stamp(
            std::fs::metadata(path)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len()))),
        )
    }
}

/// Watches for reload triggers and applies new configs.
pub struct Reloader {
    path: PathBuf,
    current: Config,
    router: Arc<Router>,
    certs: Arc<CertStore>,
    /// `[admin]`, as the admin listener reads it at each request.
    admin: Arc<ArcSwap<Admin>>,
    /// Where the admin listener is bound: there until a restart, whatever a reload says.
    admin_bound: std::net::SocketAddr,
    /// `[limits]`, for the parts that apply its caps and rates.
    limits: watch::Sender<Arc<Limits>>,
    metrics: Arc<Metrics>,
    stamps: Vec<Stamp>,
    /// The Redis TLS files as last read.
    redis_tls: Vec<Stamp>,
}

/// What a reload applies, all of it read and checked first.
struct Prepared {
    config: Config,
    /// The certificate and key (none with ACME, whose issuer swaps certificates itself).
    key: Option<rustls::sign::CertifiedKey>,
    /// The Redis TLS files, read again because they changed.
    redis_tls: Option<Renewed>,
}

impl Reloader {
    /// A reloader for a config read from a file; `None` for a config built in code. Outcomes are
    /// counted in `metrics`.
    pub fn new(
        current: Config,
        router: Arc<Router>,
        certs: Arc<CertStore>,
        metrics: Arc<Metrics>,
        admin: Arc<ArcSwap<Admin>>,
        limits: watch::Sender<Arc<Limits>>,
    ) -> Option<Reloader> {
        let path = current.source.clone()?;
        let admin_bound = current.server.admin_listen;
        let mut reloader = Reloader {
            path,
            current,
            router,
            certs,
            admin,
            admin_bound,
            limits,
            metrics,
            stamps: Vec::new(),
            redis_tls: Vec::new(),
        };
        reloader.stamps = reloader.read_stamps();
        reloader.redis_tls = reloader.read_redis_tls_stamps();
        Some(reloader)
    }

    /// The CA and client certificate files of `[pins.redis]`.
    fn redis_tls_files(&self) -> Vec<&Path> {
        let Some(redis) = &self.current.pins.redis else {
            return Vec::new();
        };
        [&redis.ca, &redis.client_cert, &redis.client_key]
            .into_iter()
            .filter_map(|file| file.as_deref())
            .collect()
    }

    fn read_redis_tls_stamps(&self) -> Vec<Stamp> {
        stamps(&self.redis_tls_files())
    }

    /// The config file, the certificate files unless ACME issues the certificate, and the
    /// Redis TLS files.
    fn watched(&self) -> Vec<&Path> {
        let tls = &self.current.tls;
        let mut watched = match tls.acme {
            Some(_) => vec![self.path.as_path()],
            None => vec![self.path.as_path(), &tls.cert, &tls.key],
        };
        watched.extend(self.redis_tls_files());
        watched
    }

    fn read_stamps(&self) -> Vec<Stamp> {
        stamps(&self.watched())
    }

    /// Runs until the task is dropped.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            let signalled = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let signalled = std::future::pending::<Option<()>>();
            let why = tokio::select! {
                _ = signalled => "SIGHUP",
                _ = tick.tick() => {
                    if self.read_stamps() == self.stamps {
                        continue;
                    }
                    "file change"
                }
            };
            self.reload(why);
        }
    }

    /// Reads the config and certificate again and applies them if all is good.
    pub fn reload(&mut self, why: &str) {
        // Whatever happens, these versions of the files have been looked at.
        self.stamps = self.read_stamps();
        match self.prepare() {
            Ok(Prepared {
                config,
                key,
                redis_tls,
            }) => {
                let restart = restart_only_changes(&self.current, &config);
                if let Some(key) = key {
                    self.certs.replace(key);
                }
                if let (Some(shared), Some(renewed)) = (self.router.shared_pins(), redis_tls) {
                    shared.renew(renewed);
                    tracing::info!(
                        "redis TLS files read again: the next connection to redis uses them"
                    );
                }
                let fleet = self.router.fleet();
                fleet.set_nodes(config.nodes.clone());
                fleet.set_health(config.health.clone());
                fleet.set_prometheus(config.prometheus.clone());
                self.router.set_settings(config.placement);
                self.router.set_census(config.census.clone());
                self.admin.store(Arc::new(config.admin.clone()));
                rounds::set_if_changed(&self.limits, config.limits.clone());
                if !restart.is_empty() {
                    tracing::warn!(changes = ?restart, "these changes take effect only after a restart");
                }
                tracing::info!(why, nodes = config.nodes.len(), "config reloaded");
                self.metrics.reloaded(true);
                self.current = config;
                self.stamps = self.read_stamps();
                self.redis_tls = self.read_redis_tls_stamps();
            }
            Err(reason) => {
                self.metrics.reloaded(false);
                tracing::error!(why, error = %reason, "reload rejected; the running config stays");
            }
        }
    }

    /// The new config and the files it names, read and checked.
    fn prepare(&self) -> Result<Prepared, String> {
        let config = Config::load(&self.path).map_err(|e| e.to_string())?;
        // A new `server.admin_listen` waits for a restart; the listener that stays needs its
        // token as long as it is off loopback.
        if config.admin.token.is_none() && !self.admin_bound.ip().is_loopback() {
            return Err(format!(
                "{}: admin.token: the admin listener stays on {} (off loopback) until a restart, and needs [admin] token or {} until then",
                self.path.display(),
                self.admin_bound,
                crate::config::ADMIN_TOKEN_ENV
            ));
        }
        let key = match config.tls.acme {
            Some(_) => None,
            None => Some(
                tls::load_certified_key(&config.tls.cert, &config.tls.key)
                    .map_err(|e| e.to_string())?,
            ),
        };
        // A changed `[pins]` section waits for a restart; unchanged, its files may have.
        let redis_tls = match (self.router.shared_pins(), &config.pins.redis) {
            (Some(_), Some(redis))
                if config.pins == self.current.pins
                    && self.read_redis_tls_stamps() != self.redis_tls =>
            {
                let renewed = SharedPins::reread(redis);
                Some(renewed.map_err(|e| format!("[pins.redis]: {e}"))?)
            }
            _ => None,
        };
        Ok(Prepared {
            config,
            key,
            redis_tls,
        })
    }
}

/// What the files look like now.
fn stamps(paths: &[&Path]) -> Vec<Stamp> {
    paths.iter().map(|p| Stamp::of(p)).collect()
}

/// The keys of `[limits]` that changed and are read at start only, as `limits.<key>`.
fn restart_only_limits(old: &Limits, new: &Limits) -> Vec<String> {
    let table = |limits: &Limits| match toml::Value::try_from(limits) {
        Ok(toml::Value::Table(table)) => table,
        _ => toml::Table::new(),
    };
    let (old, new) = (table(old), table(new));
    let keys = old
        .keys()
        .chain(new.keys().filter(|key| !old.contains_key(*key)));
    keys.filter(|key| !Limits::LIVE.contains(&key.as_str()) && old.get(*key) != new.get(*key))
        .map(|key| format!("limits.{key}"))
        .collect()
}

/// Config sections (and keys of `[limits]`) that changed but are only read at start.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let sections = [
        ("server", old.server != new.server),
        ("tls.acme", old.tls.acme != new.tls.acme),
        ("routing", old.routing != new.routing),
        ("upstream", old.upstream != new.upstream),
        ("pins", old.pins != new.pins),
        ("log", old.log != new.log),
    ];
    let changed = sections
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name));
    (changed.map(str::to_owned))
        .chain(restart_only_limits(&old.limits, &new.limits))
        .collect()
}
