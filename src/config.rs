//! The TOML configuration: schema, defaults and validation.
//!
//! The schema is these structs, read by serde: unknown keys are errors, durations are written as
//! `"30s"` or `"10m"` (`humantime-serde`), enums in lower case, and a missing key takes its
//! default. [`Config::validate`] then checks ranges and what one value means for another, and
//! fills the defaults that follow from other values. Every error names the file, the key and the
//! value: serde's through the key path and the line, validation's as `key = value: problem`.
//!
//! This file holds the sections and their defaults, and reads a file; `[limits]` ([`Limits`]),
//! `[census]` ([`Census`]), `[health]` and `[prometheus]` ([`Health`], [`Prometheus`]) and
//! `[[nodes]]` ([`NodeSpec`], also what the admin API registers) live in `limits.rs`,
//! `census.rs`, `fleet.rs` and `node.rs` with their checks, and `validate.rs` has the checks of
//! the rest. The module is a leaf: it imports nothing of the crate, and the typed settings other
//! modules read (`placement::Settings` is [`Placement`], `fleet::Thresholds` is [`Thresholds`])
//! are defined here.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod acme;
mod census;
mod check;
mod edge;
mod fleet;
mod limits;
mod node;
mod validate;

pub use acme::{Acme, Challenge};
pub use census::Census;
pub use edge::TrustedProxies;
pub use fleet::{Health, Prometheus, Scale, Thresholds, DEFAULT_QUERY};
pub use limits::{Limits, CANCELLED_STREAMS_WINDOW};
pub use node::{HealthCheck, NodeSpec};

/// A configuration problem, always naming where it is and what was wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The config file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not fit the schema.
    #[error(
        "{file}{}: {key}{}: {message}",
        if *line > 0 { format!(":{line}") } else { String::new() },
        value.as_ref().map(|v| format!(" = {v}")).unwrap_or_default()
    )]
    Syntax {
        /// The config file.
        file: PathBuf,
        /// 1-based line of the problem, 0 when unknown.
        line: usize,
        /// Dotted key path (`routing.mode`), or `(top level)`.
        key: String,
        /// The value as written, when the problem is one value.
        value: Option<String>,
        /// What the parser said, on one line.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("{file}: {key} = {value}: {problem}")]
    Invalid {
        /// The config file.
        file: PathBuf,
        /// Dotted key path.
        key: String,
        /// The value as written (quoted if a string).
        value: String,
        /// Why it was rejected.
        problem: String,
    },
}

/// How the router answers requests for a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Stream requests to the room's node.
    #[default]
    Proxy,
    /// Answer `307` pointing to the room's node's public URL.
    Redirect,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Proxy => "proxy",
            Mode::Redirect => "redirect",
        })
    }
}

/// The whole configuration, as the file has it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the config was read from (for messages); `None` when built in code.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// `[server]`: listeners.
    pub server: Server,
    /// `[tls]`: certificate and key paths, resolved against the config file's folder.
    pub tls: Tls,
    /// `[routing]`
    #[serde(default)]
    pub routing: Routing,
    /// `[upstream]`: how the router talks to nodes.
    #[serde(default)]
    pub upstream: Upstream,
    /// `[limits]`: what clients may hold and send.
    #[serde(default)]
    pub limits: Limits,
    /// `[placement]`: how new rooms are placed.
    #[serde(default)]
    pub placement: Placement,
    /// `[health]`: active health checks of nodes.
    #[serde(default)]
    pub health: Health,
    /// `[census]`: how often nodes with a `census_url` are asked which rooms they host.
    #[serde(default)]
    pub census: Census,
    /// `[pins]`: pins kept across restarts and shared with other replicas.
    #[serde(default)]
    pub pins: Pins,
    /// `[admin]`: admin API access.
    #[serde(default)]
    pub admin: Admin,
    /// `[log]`
    #[serde(default)]
    pub log: Log,
    /// `[prometheus]`: where node CPU comes from; `None`: all nodes count as equally loaded.
    pub prometheus: Option<Prometheus>,
    /// `[[nodes]]`: the fleet.
    #[serde(default)]
    pub nodes: Vec<NodeSpec>,
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// HTTPS listeners (a string or a list).
    #[serde(deserialize_with = "one_or_many")]
    pub listen: Vec<SocketAddr>,
    /// Plain-HTTP listener that redirects to HTTPS.
    #[serde(default)]
    pub http_listen: Option<SocketAddr>,
    /// The HTTPS port used in those redirects; unset: the first `listen` port.
    #[serde(default)]
    pub public_https_port: Option<u16>,
    /// How long open requests and tunnels may take to finish after a shutdown signal.
    #[serde(default = "secs::<30>", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// The admin listener (plain HTTP: JSON API, dashboard, metrics).
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
    /// Expect a PROXY protocol header (v1 or v2) from the `trusted_proxies` on the HTTPS and
    /// plain-HTTP listeners; the client address is its source.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Load balancers and proxies whose PROXY header and forwarding headers are believed.
    #[serde(default)]
    pub trusted_proxies: TrustedProxies,
    /// A `Strict-Transport-Security` value added to every HTTPS answer (unset: none).
    #[serde(default)]
    pub hsts: Option<String>,
    /// A folder whose `.well-known/acme-challenge/` files the plain-HTTP listener serves (an
    /// external certbot `--webroot`, or another replica's `[tls.acme] state_dir`).
    #[serde(default)]
    pub acme_webroot: Option<PathBuf>,
    /// Offer WebSockets over HTTP/2 (RFC 8441): browsers then open them as streams of their
    /// page's connection, which saves each a TLS handshake and a file descriptor but keeps that
    /// connection's HTTP/2 state for the meeting's length (see the README's tunnel memory).
    #[serde(default)]
    pub websockets_over_http2: bool,
}

impl Server {
    /// The HTTPS port the plain-HTTP listener redirects to.
    pub fn public_https_port(&self) -> u16 {
        (self.public_https_port).unwrap_or_else(|| self.listen.first().map_or(443, |a| a.port()))
    }
}

/// `[log]`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    /// Line format.
    pub format: LogFormat,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// `[admin]`
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Admin {
    /// Bearer token every admin request must carry; required off loopback.
    /// [`ADMIN_TOKEN_ENV`] wins over the file.
    pub token: Option<String>,
    /// Leave `/metrics` and `/healthz` open without the token.
    pub open_metrics: bool,
    /// Host names the admin listener answers to besides its own address and `localhost`
    /// (lower-case, without port): the names of a reverse proxy in front of it.
    pub allowed_hosts: Vec<String>,
}

/// `[tls]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain (empty with `[tls.acme]`).
    #[serde(default)]
    pub cert: PathBuf,
    /// PEM private key (empty with `[tls.acme]`).
    #[serde(default)]
    pub key: PathBuf,
    /// Certificates from an ACME server instead of files.
    #[serde(default)]
    pub acme: Option<Acme>,
}

/// `[routing]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Routing {
    /// Proxy or redirect.
    pub mode: Mode,
    /// A pin with no request for this long is forgotten.
    #[serde(with = "humantime_serde")]
    pub pin_idle_timeout: Duration,
    /// Name of the cookie that keeps a browser's assets on its room's node.
    pub affinity_cookie: String,
}

impl Default for Routing {
    fn default() -> Routing {
        Routing {
            mode: Mode::Proxy,
            pin_idle_timeout: Duration::from_secs(600),
            affinity_cookie: "jitsi_router_node".into(),
        }
    }
}

/// `[pins]`
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Pins {
    /// Where pins are written at shutdown and read at start; `None`: memory only.
    pub snapshot_path: Option<PathBuf>,
    /// Pins shared with other router replicas through Redis; `None`: this router's only.
    pub redis: Option<SharedPins>,
}

/// `[pins.redis]`: the Redis server router replicas share their pins through.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedPins {
    /// `redis://[user:password@]host[:port][/db]`, `rediss://…` (TLS) or
    /// `unix:///path/to/socket`.
    pub url: String,
    /// For `rediss://`: the CA certificates (PEM) that sign the server's certificate, trusted
    /// instead of the system's roots. `None`: the system's roots.
    pub ca: Option<PathBuf>,
    /// For `rediss://`: a client certificate chain (PEM), for a Redis that asks for one
    /// (`tls-auth-clients`, on by default once Redis serves TLS); with `client_key`.
    pub client_cert: Option<PathBuf>,
    /// The private key (PEM) of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Redis Sentinel: each sentinel's `host:port`. With them, `url`'s host is the name the
    /// sentinels monitor the primary under (`sentinel monitor <name> …`), and the sentinels
    /// say where it is, again after every failure. They are reached as `url` says: TLS, with
    /// `ca` and `client_cert`, for `rediss://`.
    #[serde(default)]
    pub sentinels: Vec<String>,
    /// The sentinels' password (`requirepass` in their config), when they ask for one.
    pub sentinel_password: Option<String>,
    /// Redis Cluster: `url` names one node of the cluster (any), whose user and password
    /// every node takes; the router learns the others from it and follows the cluster's
    /// failovers and slot moves. Every pin key carries the prefix as its hash tag, so that all
    /// pins sit in one slot and a sync batch is one script call.
    #[serde(default)]
    pub cluster: bool,
    /// What every key starts with; replicas of one fleet must use the same.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// The longest a request waits for Redis before this router places the room alone.
    #[serde(default = "millis::<250>", with = "humantime_serde")]
    pub timeout: Duration,
    /// How often this router checks its pins against the shared ones and refreshes their
    /// expiry there.
    #[serde(default = "secs::<5>", with = "humantime_serde")]
    pub sync_interval: Duration,
}

/// `[upstream]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Upstream {
    /// Time allowed to open a connection to a node.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time allowed for a node to start its response (BOSH holds requests for 60 s).
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// How long an idle pooled connection is kept: under the 65 s `keepalive_timeout` of the
    /// nginx in front of a Jitsi node, so that the router, not the node, ends it.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// Most idle pooled connections kept per node by each worker thread (one per core).
    pub pool_max_idle_per_node: usize,
    /// Extra CA certificates (PEM) trusted for `https://` upstreams, besides the system's.
    pub ca: Option<PathBuf>,
    /// Keep the client's `Host` header (true) or send the upstream's authority (false).
    pub preserve_host: bool,
}

impl Default for Upstream {
    fn default() -> Upstream {
        Upstream {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(90),
            pool_idle_timeout: Duration::from_secs(60),
            pool_max_idle_per_node: 256,
            ca: None,
            preserve_host: true,
        }
    }
}

/// `[placement]`: how placement weighs the fleet (`placement::Settings`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Placement {
    /// Nodes at or above this estimated busy fraction take no new rooms while others are below.
    pub max_cpu: f64,
    /// The herding bound: how much faster than its share a node may take a window's rooms.
    pub balance_factor: f64,
    /// Busy CPU per room on a node of weight 1; `None` learns it from the fleet.
    pub room_cost: Option<f64>,
}

impl Default for Placement {
    fn default() -> Self {
        Placement {
            max_cpu: 0.85,
            balance_factor: 1.25,
            room_cost: None,
        }
    }
}

/// Where the admin listener binds unless configured.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9480";

/// Environment variable that supplies the admin token (wins over the file).
pub const ADMIN_TOKEN_ENV: &str = "JITSI_ROUTER_ADMIN_TOKEN";

pub(super) fn secs<const N: u64>() -> Duration {
    Duration::from_secs(N)
}

fn millis<const N: u64>() -> Duration {
    Duration::from_millis(N)
}

pub(super) fn one() -> f64 {
    1.0
}

fn default_admin_listen() -> SocketAddr {
    DEFAULT_ADMIN_LISTEN.parse().expect("a valid address")
}

fn default_prefix() -> String {
    "jitsi-router:pin:".into()
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(SocketAddr),
        Many(Vec<SocketAddr>),
    }
    let addresses = OneOrMany::deserialize(d).map_err(|_| {
        serde::de::Error::custom(
            "not an IP address with a port, like \"0.0.0.0:443\" or \"[::]:443\", or a list of them",
        )
    })?;
    Ok(match addresses {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    /// Reads and validates config text; `file` names it in errors and anchors relative paths.
    pub fn from_toml(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let syntax = |key: String, e: &toml::de::Error| {
            let span = e.span().filter(|s| s.end <= text.len() && s.start < s.end);
            // The value as written, unless the problem is a key (unknown, or missing).
            let of_a_value = key != "(top level)" && !e.message().contains(" field `");
            let value = (span.clone())
                .map(|s| text[s].split_whitespace().collect::<Vec<_>>().join(" "))
                .filter(|v| of_a_value && !v.is_empty() && v.len() <= 200);
            ConfigError::Syntax {
                file: file.to_path_buf(),
                line: span.map_or(0, |s| text[..s.start].lines().count().max(1)),
                key,
                value,
                message: e.message().split_whitespace().collect::<Vec<_>>().join(" "),
            }
        };
        let de = toml::Deserializer::parse(text).map_err(|e| syntax("(top level)".into(), &e))?;
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = match e.path().to_string() {
                key if key == "." => "(top level)".to_owned(),
                key => key,
            };
            syntax(key, e.inner())
        })?;
        config.source = Some(file.to_path_buf());
        config.validate(file)?;
        Ok(config)
    }

    /// A config built in code (for `demo` and tests) with every default applied.
    pub fn with_defaults(
        listen: Vec<SocketAddr>,
        cert: PathBuf,
        key: PathBuf,
        nodes: Vec<NodeSpec>,
    ) -> Result<Config, ConfigError> {
        let mut config = Config {
            source: None,
            server: Server {
                listen,
                http_listen: None,
                public_https_port: None,
                shutdown_grace: secs::<30>(),
                admin_listen: "127.0.0.1:0".parse().expect("a valid address"),
                proxy_protocol: false,
                trusted_proxies: TrustedProxies::default(),
                hsts: None,
                acme_webroot: None,
                websockets_over_http2: false,
            },
            tls: Tls {
                cert,
                key,
                acme: None,
            },
            routing: Routing::default(),
            upstream: Upstream::default(),
            limits: Limits::default(),
            placement: Placement::default(),
            health: Health::default(),
            census: Census::default(),
            pins: Pins::default(),
            admin: Admin::default(),
            log: Log::default(),
            prometheus: None,
            nodes,
        };
        config.validate(Path::new("(built-in)"))?;
        Ok(config)
    }
}
