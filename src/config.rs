//! The TOML configuration: schema, defaults and validation.
//!
//! Parsing happens in two steps. serde reads the file into `raw` structs whose fields are plain
//! strings and numbers (unknown keys are an error); [`Config::from_toml`] then checks every value and
//! builds typed settings, so each error can name the file, the key and the offending value.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;

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
    #[error("{file}:{line}: {key}: {message}")]
    Syntax {
        /// The config file.
        file: PathBuf,
        /// 1-based line of the problem, 0 when unknown.
        line: usize,
        /// Dotted key path (`routing.mode`), or `(top level)`.
        key: String,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Stream requests to the room's node.
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

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the config was read from (for messages); `None` when built in code.
    pub source: Option<PathBuf>,
    /// Listeners.
    pub server: Server,
    /// Certificate and key paths, resolved against the config file's folder.
    pub tls: Tls,
    /// Routing behaviour.
    pub routing: Routing,
    /// How the router talks to nodes.
    pub upstream: Upstream,
    /// Limits on what clients may send.
    pub limits: Limits,
    /// How new rooms are placed.
    pub placement: Placement,
    /// Active health checks of nodes.
    pub health: Health,
    /// Where pins are kept across restarts; `None` keeps them in memory only.
    pub pins_snapshot: Option<PathBuf>,
    /// Pins shared with other router replicas through Redis (`[pins.redis]`); `None`: this
    /// router's own memory only.
    pub shared_pins: Option<SharedPins>,
    /// Admin API access.
    pub admin: Admin,
    /// Log line format.
    pub log_format: LogFormat,
    /// Where node CPU comes from; `None` means all nodes count as equally loaded.
    pub prometheus: Option<Prometheus>,
    /// The fleet.
    pub nodes: Vec<NodeSpec>,
}

/// `[server]`
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// HTTPS listeners (`listen`, a string or a list).
    pub listen: Vec<SocketAddr>,
    /// Plain-HTTP listener that redirects to HTTPS.
    pub http_listen: Option<SocketAddr>,
    /// The HTTPS port used in those redirects (default: the first `listen` port).
    pub public_https_port: u16,
    /// How long open requests and tunnels may take to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// The admin listener (plain HTTP: JSON API, health).
    pub admin_listen: SocketAddr,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// `[admin]`
#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    /// Bearer token every admin request must carry; required off loopback.
    pub token: Option<String>,
    /// Leave `/metrics` and `/healthz` open without the token.
    pub open_metrics: bool,
    /// Host names the admin listener answers to besides its own address and `localhost`
    /// (lower-case, without port): the names of a reverse proxy in front of it.
    pub allowed_hosts: Vec<String>,
}

/// `[tls]`
#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// `[routing]`
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// Proxy or redirect.
    pub mode: Mode,
    /// A pin with no request for this long is forgotten.
    pub pin_idle_timeout: Duration,
    /// Name of the cookie that keeps a browser's assets on its room's node.
    pub affinity_cookie: String,
}

/// `[pins.redis]`: the Redis server router replicas share their pins through.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedPins {
    /// `redis://[user:password@]host[:port][/db]` or `unix:///path/to/socket`.
    pub url: String,
    /// What every key starts with; replicas of one fleet must use the same.
    pub prefix: String,
    /// The longest a request waits for Redis before this router places the room alone.
    pub timeout: Duration,
    /// How often this router checks its pins against the shared ones and refreshes their
    /// expiry there.
    pub sync_interval: Duration,
}

/// `[upstream]`
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// Time allowed to open a connection to a node.
    pub connect_timeout: Duration,
    /// Time allowed for a node to start its response (BOSH holds requests for 60 s).
    pub response_timeout: Duration,
    /// How long an idle pooled connection is kept (default 60 s, under the nodes' nginx
    /// `keepalive_timeout` of 65 s).
    pub pool_idle_timeout: Duration,
    /// Most idle pooled connections kept per node.
    pub pool_max_idle_per_node: usize,
    /// Extra CA certificates (PEM) trusted for `https://` upstreams, besides the system's.
    pub ca: Option<PathBuf>,
    /// Keep the client's `Host` header (true) or send the upstream's authority (false).
    pub preserve_host: bool,
}

/// `[limits]`: what one client may hold or send, and how long each state of a client connection
/// may last. Defaults follow what nginx and HAProxy ship; the README's "Security and limits"
/// section says why each is what it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest request head (request line and headers), in bytes; larger gets `431`.
    pub max_request_head: usize,
    /// Most header fields in an HTTP/1.1 request head; more gets `431`.
    pub max_request_headers: usize,
    /// Longest room key, in characters; longer gets `400`.
    pub max_room_chars: usize,
    /// Most rooms pinned at once; beyond it new rooms are routed without a pin.
    pub max_pins: usize,
    /// Time allowed for a client's TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Time for a request head: the first one after the TLS handshake (for HTTP/2, the
    /// preface and the first stream's headers), and an HTTP/1.1 head from its first byte.
    pub request_head_timeout: Duration,
    /// Time a connection may sit with no request in flight before it is closed (HTTP/1.1) or
    /// sent `GOAWAY` (HTTP/2).
    pub keepalive_timeout: Duration,
    /// Longest pause in a request body the node is waiting for.
    pub request_body_timeout: Duration,
    /// Longest pause in a node's response body after its head.
    pub response_body_timeout: Duration,
    /// Longest a client may take no bytes of what the router sends it.
    pub send_timeout: Duration,
    /// Open client connections, all listeners together; `None`: half the open-file limit
    /// (the other half is for the upstream connections those clients' requests need).
    pub max_connections: Option<usize>,
    /// Open client connections from one address (an IPv6 client: its /64).
    pub max_connections_per_client: usize,
    /// New rooms one client address may create per second, on average.
    pub new_rooms_per_second: f64,
    /// New rooms one client address may create at once before the rate applies.
    pub new_room_burst: u32,
    /// Streams one HTTP/2 connection may have open at once.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 streams a client may reset before the router has read them, per connection.
    pub h2_max_pending_reset_streams: usize,
    /// HTTP/2 streams the router may reset for protocol errors before it closes the connection.
    pub h2_max_local_reset_streams: usize,
    /// HTTP/2 streams a client may cancel before their answer within
    /// [`CANCELLED_STREAMS_WINDOW`]; one more and the connection gets `GOAWAY`.
    pub h2_max_cancelled_streams: u32,
    /// Seconds announced in `Retry-After` when no node can take a room.
    pub retry_after: Duration,
}

/// The window [`Limits::h2_max_cancelled_streams`] counts in.
pub const CANCELLED_STREAMS_WINDOW: Duration = Duration::from_secs(10);

/// `[health]`
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// Path requested on each node's upstream.
    pub path: String,
    /// Time between checks of one node.
    pub interval: Duration,
    /// Time allowed for one check.
    pub timeout: Duration,
    /// Failures to go unhealthy and successes to come back.
    pub thresholds: Thresholds,
}

/// How Prometheus expresses the busy value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// 0..1
    Fraction,
    /// 0..100
    Percent,
}

/// `[prometheus]`
#[derive(Debug, Clone, PartialEq)]
pub struct Prometheus {
    /// Base URL of the Prometheus server.
    pub url: String,
    /// PromQL returning each node's busy CPU fraction (0..1).
    pub query: String,
    /// The result label matched against each node's `instance`.
    pub label: String,
    /// How often to query.
    pub interval: Duration,
    /// Time allowed for one query.
    pub timeout: Duration,
    /// Past this age the CPU data are ignored and hashing decides.
    pub max_staleness: Duration,
    /// Whether the query answers fractions or percentages.
    pub scale: Scale,
}

impl Prometheus {
    /// A section for this server, query and interval, with the other settings at their
    /// defaults, as the demo builds it in code.
    pub fn built_in(url: &str, query: &str, interval: Duration) -> Result<Prometheus, ConfigError> {
        let check = Check {
            file: Path::new("(built-in)"),
        };
        prometheus(
            &check,
            raw::Prometheus {
                scale: None,
                url: url.to_owned(),
                query: Some(query.to_owned()),
                label: None,
                interval: Some(humantime::format_duration(interval).to_string()),
                timeout: None,
                max_staleness: None,
            },
        )
    }
}

/// One `[[nodes]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    /// Unique name, sent as `X-Jitsi-Shard`.
    pub name: String,
    /// Proxy target (`http://` or `https://`, no path).
    pub upstream: Uri,
    /// Redirect-mode target.
    pub public_url: Option<String>,
    /// This node's value of the Prometheus label.
    pub instance: String,
    /// colibri-ws server ids served by this node.
    pub jvb_server_ids: Vec<String>,
    /// Keep this node's rooms but give it no new ones.
    pub drain: bool,
    /// Capacity relative to the other nodes (> 0, default 1.0): a node of weight 2 is meant to
    /// carry twice the rooms of one of weight 1 at the same CPU.
    pub weight: f64,
}

/// Where the admin listener binds unless configured.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9480";

/// Environment variable that supplies the admin token (wins over the file).
pub const ADMIN_TOKEN_ENV: &str = "JITSI_ROUTER_ADMIN_TOKEN";

/// The default PromQL: busy CPU fraction per instance, from node_exporter.
pub const DEFAULT_QUERY: &str =
    r#"1 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle"}[1m]))"#;

/// How placement weighs the fleet; the `[placement]` section (`placement::Settings`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    /// Nodes at or above this estimated busy fraction take no new rooms while others are below.
    pub max_cpu: f64,
    /// Bounded-load factor: a node's rooms may exceed the mean by at most this factor.
    pub balance_factor: f64,
    /// Busy CPU per room; `None` learns it from the fleet.
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

/// Health-check thresholds (`fall` failures to go unhealthy, `rise` successes to come back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Consecutive failures that make a healthy node unhealthy.
    pub fall: u32,
    /// Consecutive successes that make an unhealthy node healthy.
    pub rise: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { fall: 3, rise: 2 }
    }
}

mod raw {
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct File {
        pub server: Server,
        pub tls: Tls,
        #[serde(default)]
        pub routing: Routing,
        #[serde(default)]
        pub upstream: Upstream,
        #[serde(default)]
        pub limits: Limits,
        #[serde(default)]
        pub placement: Placement,
        #[serde(default)]
        pub health: Health,
        #[serde(default)]
        pub pins: Pins,
        #[serde(default)]
        pub admin: Admin,
        #[serde(default)]
        pub log: Log,
        pub prometheus: Option<Prometheus>,
        #[serde(default)]
        pub nodes: Vec<Node>,
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    pub enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Server {
        pub listen: OneOrMany,
        pub http_listen: Option<String>,
        pub public_https_port: Option<u16>,
        pub shutdown_grace: Option<String>,
        pub admin_listen: Option<String>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Log {
        pub format: Option<String>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Admin {
        pub token: Option<String>,
        pub open_metrics: Option<bool>,
        pub allowed_hosts: Option<Vec<String>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Tls {
        pub cert: String,
        pub key: String,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Routing {
        pub mode: Option<String>,
        pub pin_idle_timeout: Option<String>,
        pub affinity_cookie: Option<String>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Upstream {
        pub connect_timeout: Option<String>,
        pub response_timeout: Option<String>,
        pub pool_idle_timeout: Option<String>,
        pub pool_max_idle_per_node: Option<usize>,
        pub ca: Option<String>,
        pub preserve_host: Option<bool>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Limits {
        pub max_request_head: Option<usize>,
        pub max_request_headers: Option<usize>,
        pub max_room_chars: Option<usize>,
        pub max_pins: Option<usize>,
        pub tls_handshake_timeout: Option<String>,
        pub request_head_timeout: Option<String>,
        pub keepalive_timeout: Option<String>,
        pub request_body_timeout: Option<String>,
        pub response_body_timeout: Option<String>,
        pub send_timeout: Option<String>,
        pub max_connections: Option<usize>,
        pub max_connections_per_client: Option<usize>,
        pub new_rooms_per_second: Option<f64>,
        pub new_room_burst: Option<u32>,
        pub h2_max_concurrent_streams: Option<u32>,
        pub h2_max_pending_reset_streams: Option<usize>,
        pub h2_max_local_reset_streams: Option<usize>,
        pub h2_max_cancelled_streams: Option<u32>,
        pub retry_after: Option<String>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Placement {
        pub max_cpu: Option<f64>,
        pub balance_factor: Option<f64>,
        pub room_cost: Option<f64>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Pins {
        pub snapshot_path: Option<String>,
        pub redis: Option<Redis>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Redis {
        pub url: String,
        pub prefix: Option<String>,
        pub timeout: Option<String>,
        pub sync_interval: Option<String>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Health {
        pub path: Option<String>,
        pub interval: Option<String>,
        pub timeout: Option<String>,
        pub fall: Option<u32>,
        pub rise: Option<u32>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Prometheus {
        pub scale: Option<String>,
        pub url: String,
        pub query: Option<String>,
        pub label: Option<String>,
        pub interval: Option<String>,
        pub timeout: Option<String>,
        pub max_staleness: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Node {
        pub name: String,
        pub upstream: String,
        pub public_url: Option<String>,
        pub instance: Option<String>,
        pub jvb_server_ids: Option<Vec<String>>,
        pub drain: Option<bool>,
        pub weight: Option<f64>,
    }
}

/// Validation context: the file name plus helpers that build precise errors.
struct Check<'a> {
    file: &'a Path,
}

impl Check<'_> {
    fn invalid(
        &self,
        key: &str,
        value: impl fmt::Debug,
        problem: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            key: key.to_owned(),
            value: format!("{value:?}"),
            problem: problem.into(),
        }
    }

    fn duration(
        &self,
        key: &str,
        value: Option<&str>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(text) = value else {
            return Ok(default);
        };
        let parsed = humantime::parse_duration(text).map_err(|e| {
            self.invalid(
                key,
                text,
                format!("not a duration like \"500ms\", \"30s\" or \"10m\" ({e})"),
            )
        })?;
        if parsed.is_zero() {
            return Err(self.invalid(key, text, "must be greater than zero"));
        }
        Ok(parsed)
    }

    fn addr(&self, key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
        text.parse().map_err(|_| {
            self.invalid(
                key,
                text,
                "not an IP address with a port, like \"0.0.0.0:443\" or \"[::]:443\"",
            )
        })
    }

    fn path(&self, key: &str, text: &str) -> Result<PathBuf, ConfigError> {
        if text.is_empty() {
            return Err(self.invalid(key, text, "must name a file"));
        }
        let path = Path::new(text);
        Ok(if path.is_relative() {
            self.file.parent().unwrap_or(Path::new(".")).join(path)
        } else {
            path.to_path_buf()
        })
    }

    fn http_url(&self, key: &str, text: &str, allow_path: bool) -> Result<Uri, ConfigError> {
        let uri: Uri = text
            .parse()
            .map_err(|e| self.invalid(key, text, format!("not a URL ({e})")))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => return Err(self.invalid(key, text, "must start with http:// or https://")),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(self.invalid(key, text, "has no host"));
        }
        if uri.query().is_some() {
            return Err(self.invalid(key, text, "must not have a query"));
        }
        if !allow_path && !matches!(uri.path(), "" | "/") {
            return Err(self.invalid(
                key,
                text,
                "must not have a path: requests keep their own path",
            ));
        }
        Ok(uri)
    }
}

/// A node name travels in a header and a cookie, so it keeps to a safe alphabet.
fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
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

    /// Validates config text; `file` names it in errors and anchors relative paths.
    pub fn from_toml(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::parse(text)
            .map_err(|e| syntax_error(file, text, "(top level)".into(), &e))?;
        let raw: raw::File = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." {
                "(top level)".to_owned()
            } else {
                key
            };
            syntax_error(file, text, key, e.inner())
        })?;
        Config::from_raw(raw, file)
    }

    fn from_raw(raw: raw::File, file: &Path) -> Result<Config, ConfigError> {
        let check = Check { file };
        let server = server(&check, raw.server)?;
        let tls = Tls {
            cert: check.path("tls.cert", &raw.tls.cert)?,
            key: check.path("tls.key", &raw.tls.key)?,
        };
        let routing = routing(&check, raw.routing)?;
        let upstream = upstream(&check, raw.upstream)?;
        let limits = limits(&check, raw.limits)?;
        let placement = placement(&check, raw.placement)?;
        let health = health(&check, raw.health)?;
        let pins_snapshot = raw
            .pins
            .snapshot_path
            .as_deref()
            .map(|p| check.path("pins.snapshot_path", p))
            .transpose()?;
        let shared_pins = raw.pins.redis.map(|r| shared_pins(&check, r)).transpose()?;
        let admin = admin(&check, raw.admin, server.admin_listen)?;
        let log_format = match raw.log.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(check.invalid("log.format", other, "must be \"text\" or \"json\""))
            }
        };
        let prometheus = raw.prometheus.map(|p| prometheus(&check, p)).transpose()?;
        let nodes = nodes(&check, raw.nodes, routing.mode)?;
        Ok(Config {
            source: Some(file.to_path_buf()),
            server,
            tls,
            routing,
            upstream,
            limits,
            placement,
            health,
            pins_snapshot,
            shared_pins,
            admin,
            log_format,
            prometheus,
            nodes,
        })
    }
}

fn syntax_error(file: &Path, text: &str, key: String, e: &toml::de::Error) -> ConfigError {
    let line = e.span().map_or(0, |span| {
        text[..span.start.min(text.len())].lines().count().max(1)
    });
    let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
    ConfigError::Syntax {
        file: file.to_path_buf(),
        line,
        key,
        message,
    }
}

fn server(check: &Check, raw: raw::Server) -> Result<Server, ConfigError> {
    let texts = match raw.listen {
        raw::OneOrMany::One(one) => vec![one],
        raw::OneOrMany::Many(many) => many,
    };
    if texts.is_empty() {
        return Err(check.invalid("server.listen", "[]", "needs at least one address"));
    }
    let listen = texts
        .iter()
        .map(|t| check.addr("server.listen", t))
        .collect::<Result<Vec<_>, _>>()?;
    let http_listen = raw
        .http_listen
        .as_deref()
        .map(|t| check.addr("server.http_listen", t))
        .transpose()?;
    let shutdown_grace = check.duration(
        "server.shutdown_grace",
        raw.shutdown_grace.as_deref(),
        Duration::from_secs(30),
    )?;
    let admin_listen = check.addr(
        "server.admin_listen",
        raw.admin_listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN),
    )?;
    Ok(Server {
        public_https_port: raw.public_https_port.unwrap_or(listen[0].port()),
        listen,
        http_listen,
        shutdown_grace,
        admin_listen,
    })
}

fn routing(check: &Check, raw: raw::Routing) -> Result<Routing, ConfigError> {
    let mode = match raw.mode.as_deref() {
        None | Some("proxy") => Mode::Proxy,
        Some("redirect") => Mode::Redirect,
        Some(other) => {
            return Err(check.invalid("routing.mode", other, "must be \"proxy\" or \"redirect\""))
        }
    };
    let affinity_cookie = raw
        .affinity_cookie
        .unwrap_or_else(|| "jitsi_router_node".into());
    let token_char = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if affinity_cookie.is_empty() || !affinity_cookie.bytes().all(token_char) {
        return Err(check.invalid(
            "routing.affinity_cookie",
            &affinity_cookie,
            "not a valid cookie name",
        ));
    }
    Ok(Routing {
        mode,
        pin_idle_timeout: check.duration(
            "routing.pin_idle_timeout",
            raw.pin_idle_timeout.as_deref(),
            Duration::from_secs(600),
        )?,
        affinity_cookie,
    })
}

fn shared_pins(check: &Check, raw: raw::Redis) -> Result<SharedPins, ConfigError> {
    use redis::IntoConnectionInfo;
    let url = raw.url;
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    if !matches!(scheme, "redis" | "unix" | "redis+unix") {
        return Err(check.invalid(
            "pins.redis.url",
            &url,
            "must start with redis:// or unix:// (TLS to Redis is not built in)",
        ));
    }
    if let Err(e) = url.as_str().into_connection_info() {
        return Err(check.invalid("pins.redis.url", &url, format!("not a Redis URL ({e})")));
    }
    let prefix = raw.prefix.unwrap_or_else(|| "jitsi-router:pin:".to_owned());
    if prefix.is_empty() {
        return Err(check.invalid("pins.redis.prefix", &prefix, "must not be empty"));
    }
    Ok(SharedPins {
        url,
        prefix,
        timeout: check.duration(
            "pins.redis.timeout",
            raw.timeout.as_deref(),
            Duration::from_millis(250),
        )?,
        sync_interval: check.duration(
            "pins.redis.sync_interval",
            raw.sync_interval.as_deref(),
            Duration::from_secs(5),
        )?,
    })
}

fn upstream(check: &Check, raw: raw::Upstream) -> Result<Upstream, ConfigError> {
    Ok(Upstream {
        connect_timeout: check.duration(
            "upstream.connect_timeout",
            raw.connect_timeout.as_deref(),
            Duration::from_secs(5),
        )?,
        response_timeout: check.duration(
            "upstream.response_timeout",
            raw.response_timeout.as_deref(),
            Duration::from_secs(90),
        )?,
        pool_idle_timeout: check.duration(
            "upstream.pool_idle_timeout",
            raw.pool_idle_timeout.as_deref(),
            // Under the 65 s `keepalive_timeout` of the nginx in front of a Jitsi node (Debian's
            // and Jitsi's packages), so that the router, not the node, ends an idle connection.
            Duration::from_secs(60),
        )?,
        pool_max_idle_per_node: raw.pool_max_idle_per_node.unwrap_or(256),
        ca: raw
            .ca
            .as_deref()
            .map(|p| check.path("upstream.ca", p))
            .transpose()?,
        preserve_host: raw.preserve_host.unwrap_or(true),
    })
}

fn limits(check: &Check, raw: raw::Limits) -> Result<Limits, ConfigError> {
    let max_request_head = raw.max_request_head.unwrap_or(16 * 1024);
    if !(1024..=1024 * 1024).contains(&max_request_head) {
        return Err(check.invalid(
            "limits.max_request_head",
            max_request_head,
            "must be between 1024 and 1048576 bytes",
        ));
    }
    let max_room_chars = raw.max_room_chars.unwrap_or(200);
    if !(1..=4096).contains(&max_room_chars) {
        return Err(check.invalid(
            "limits.max_room_chars",
            max_room_chars,
            "must be between 1 and 4096",
        ));
    }
    let at_least_one = |key: &str, value: Option<usize>, default: usize| match value {
        Some(0) => Err(check.invalid(key, 0, "must be at least 1")),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    let new_rooms_per_second = raw.new_rooms_per_second.unwrap_or(10.0);
    if !(new_rooms_per_second.is_finite() && new_rooms_per_second > 0.0) {
        return Err(check.invalid(
            "limits.new_rooms_per_second",
            new_rooms_per_second,
            "must be a number above 0",
        ));
    }
    let duration = |key: &str, value: &Option<String>, seconds: u64| {
        check.duration(key, value.as_deref(), Duration::from_secs(seconds))
    };
    let as_u32 = |key: &str, value: Option<u32>, default: u32| {
        at_least_one(key, value.map(|v| v as usize), default as usize).map(|v| v as u32)
    };
    let max_request_headers = raw.max_request_headers.unwrap_or(100);
    if !(16..=4096).contains(&max_request_headers) {
        return Err(check.invalid(
            "limits.max_request_headers",
            max_request_headers,
            "must be between 16 and 4096",
        ));
    }
    Ok(Limits {
        max_request_head,
        max_request_headers,
        max_room_chars,
        max_pins: at_least_one("limits.max_pins", raw.max_pins, 2_000_000)?,
        tls_handshake_timeout: duration(
            "limits.tls_handshake_timeout",
            &raw.tls_handshake_timeout,
            10,
        )?,
        request_head_timeout: duration(
            "limits.request_head_timeout",
            &raw.request_head_timeout,
            30,
        )?,
        keepalive_timeout: duration("limits.keepalive_timeout", &raw.keepalive_timeout, 75)?,
        request_body_timeout: duration(
            "limits.request_body_timeout",
            &raw.request_body_timeout,
            60,
        )?,
        response_body_timeout: duration(
            "limits.response_body_timeout",
            &raw.response_body_timeout,
            60,
        )?,
        send_timeout: duration("limits.send_timeout", &raw.send_timeout, 60)?,
        max_connections: raw
            .max_connections
            .map(|n| at_least_one("limits.max_connections", Some(n), n))
            .transpose()?,
        max_connections_per_client: at_least_one(
            "limits.max_connections_per_client",
            raw.max_connections_per_client,
            5000,
        )?,
        new_rooms_per_second,
        new_room_burst: as_u32("limits.new_room_burst", raw.new_room_burst, 100)?,
        h2_max_concurrent_streams: as_u32(
            "limits.h2_max_concurrent_streams",
            raw.h2_max_concurrent_streams,
            100,
        )?,
        h2_max_pending_reset_streams: at_least_one(
            "limits.h2_max_pending_reset_streams",
            raw.h2_max_pending_reset_streams,
            20,
        )?,
        h2_max_local_reset_streams: at_least_one(
            "limits.h2_max_local_reset_streams",
            raw.h2_max_local_reset_streams,
            1024,
        )?,
        h2_max_cancelled_streams: as_u32(
            "limits.h2_max_cancelled_streams",
            raw.h2_max_cancelled_streams,
            50,
        )?,
        retry_after: duration("limits.retry_after", &raw.retry_after, 5)?,
    })
}

fn admin(check: &Check, raw: raw::Admin, listen: SocketAddr) -> Result<Admin, ConfigError> {
    let token = std::env::var(ADMIN_TOKEN_ENV)
        .ok()
        .filter(|t| !t.is_empty())
        .or(raw.token);
    if token.as_ref().is_some_and(|t| t.len() < 16) {
        return Err(check.invalid("admin.token", "(hidden)", "use at least 16 characters"));
    }
    if token.is_none() && !listen.ip().is_loopback() {
        return Err(check.invalid(
            "server.admin_listen",
            listen.to_string(),
            format!("an admin listener off loopback needs [admin] token or {ADMIN_TOKEN_ENV}"),
        ));
    }
    let mut allowed_hosts = Vec::new();
    for host in raw.allowed_hosts.unwrap_or_default() {
        let valid = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'));
        if !valid {
            return Err(check.invalid(
                "admin.allowed_hosts",
                host,
                "must be a host name (letters, digits, '-' and '.'), without port or scheme",
            ));
        }
        allowed_hosts.push(host.to_ascii_lowercase());
    }
    Ok(Admin {
        token,
        open_metrics: raw.open_metrics.unwrap_or(false),
        allowed_hosts,
    })
}

fn placement(check: &Check, raw: raw::Placement) -> Result<Placement, ConfigError> {
    let defaults = Placement::default();
    let max_cpu = raw.max_cpu.unwrap_or(defaults.max_cpu);
    if !(max_cpu > 0.0 && max_cpu <= 1.0) {
        return Err(check.invalid(
            "placement.max_cpu",
            max_cpu,
            "must be a busy fraction in (0, 1]",
        ));
    }
    let balance_factor = raw.balance_factor.unwrap_or(defaults.balance_factor);
    if !(1.0..=100.0).contains(&balance_factor) {
        return Err(check.invalid(
            "placement.balance_factor",
            balance_factor,
            "must be between 1.0 and 100",
        ));
    }
    if let Some(cost) = raw.room_cost {
        if !(0.0..=1.0).contains(&cost) {
            return Err(check.invalid(
                "placement.room_cost",
                cost,
                "must be a busy fraction per room in [0, 1]",
            ));
        }
    }
    Ok(Placement {
        max_cpu,
        balance_factor,
        room_cost: raw.room_cost,
    })
}

fn health(check: &Check, raw: raw::Health) -> Result<Health, ConfigError> {
    let path = raw.path.unwrap_or_else(|| "/about/health".to_owned());
    if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
        return Err(check.invalid("health.path", &path, "must be a path starting with '/'"));
    }
    let defaults = Thresholds::default();
    let fall = raw.fall.unwrap_or(defaults.fall);
    let rise = raw.rise.unwrap_or(defaults.rise);
    for (key, value) in [("health.fall", fall), ("health.rise", rise)] {
        if value == 0 {
            return Err(check.invalid(key, value, "must be at least 1"));
        }
    }
    let interval = check.duration(
        "health.interval",
        raw.interval.as_deref(),
        Duration::from_secs(5),
    )?;
    Ok(Health {
        path,
        timeout: check.duration(
            "health.timeout",
            raw.timeout.as_deref(),
            Duration::from_secs(2).min(interval),
        )?,
        interval,
        thresholds: Thresholds { fall, rise },
    })
}

fn prometheus(check: &Check, raw: raw::Prometheus) -> Result<Prometheus, ConfigError> {
    let scale = match raw.scale.as_deref() {
        None | Some("fraction") => Scale::Fraction,
        Some("percent") => Scale::Percent,
        Some(other) => {
            return Err(check.invalid(
                "prometheus.scale",
                other,
                "must be \"fraction\" or \"percent\"",
            ))
        }
    };
    let url = check.http_url("prometheus.url", &raw.url, true)?;
    let interval = check.duration(
        "prometheus.interval",
        raw.interval.as_deref(),
        Duration::from_secs(30),
    )?;
    let query = raw.query.unwrap_or_else(|| DEFAULT_QUERY.to_owned());
    if query.trim().is_empty() {
        return Err(check.invalid("prometheus.query", &query, "must not be empty"));
    }
    let label = raw.label.unwrap_or_else(|| "instance".to_owned());
    if label.is_empty() {
        return Err(check.invalid("prometheus.label", &label, "must not be empty"));
    }
    Ok(Prometheus {
        url: url.to_string().trim_end_matches('/').to_owned(),
        query,
        label,
        scale,
        timeout: check.duration(
            "prometheus.timeout",
            raw.timeout.as_deref(),
            Duration::from_secs(5).min(interval),
        )?,
        max_staleness: check.duration(
            "prometheus.max_staleness",
            raw.max_staleness.as_deref(),
            interval * 3,
        )?,
        interval,
    })
}

fn nodes(check: &Check, raw: Vec<raw::Node>, mode: Mode) -> Result<Vec<NodeSpec>, ConfigError> {
    let mut nodes: Vec<NodeSpec> = Vec::with_capacity(raw.len());
    for (i, node) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("nodes[{i}].{field}");
        if !valid_node_name(&node.name) {
            return Err(check.invalid(
                &key("name"),
                &node.name,
                "use 1-64 letters, digits, '-', '_' or '.'",
            ));
        }
        if nodes.iter().any(|n| n.name == node.name) {
            return Err(check.invalid(
                &key("name"),
                &node.name,
                "another node already has this name",
            ));
        }
        let upstream = check.http_url(&key("upstream"), &node.upstream, false)?;
        let public_url = node
            .public_url
            .map(|u| {
                check
                    .http_url(&key("public_url"), &u, true)
                    .map(|_| u.trim_end_matches('/').to_owned())
            })
            .transpose()?;
        if mode == Mode::Redirect && public_url.is_none() {
            return Err(check.invalid(
                &key("public_url"),
                "",
                "required when routing.mode = \"redirect\"",
            ));
        }
        let jvb_server_ids = node
            .jvb_server_ids
            .unwrap_or_else(|| vec![node.name.clone()]);
        for id in &jvb_server_ids {
            if id.is_empty() || id.contains('/') {
                return Err(check.invalid(
                    &key("jvb_server_ids"),
                    id,
                    "must be non-empty and without '/'",
                ));
            }
            if let Some(other) = nodes.iter().find(|n| n.jvb_server_ids.contains(id)) {
                return Err(check.invalid(
                    &key("jvb_server_ids"),
                    id,
                    format!("already served by node {:?}", other.name),
                ));
            }
        }
        let weight = node.weight.unwrap_or(1.0);
        if !(weight.is_finite() && weight > 0.0 && weight <= 1000.0) {
            return Err(check.invalid(&key("weight"), weight, "must be above 0 and at most 1000"));
        }
        let instance = node.instance.unwrap_or_else(|| {
            upstream
                .authority()
                .map(|a| a.to_string())
                .unwrap_or_default()
        });
        nodes.push(NodeSpec {
            name: node.name,
            upstream,
            public_url,
            instance,
            jvb_server_ids,
            drain: node.drain.unwrap_or(false),
            weight,
        });
    }
    Ok(nodes)
}

impl Config {
    /// A config built in code (for `demo` and tests) with every default applied.
    pub fn with_defaults(
        listen: Vec<SocketAddr>,
        cert: PathBuf,
        key: PathBuf,
        nodes: Vec<NodeSpec>,
    ) -> Result<Config, ConfigError> {
        let check = Check {
            file: Path::new("(built-in)"),
        };
        let raw_server = raw::Server {
            listen: raw::OneOrMany::Many(listen.iter().map(ToString::to_string).collect()),
            http_listen: None,
            public_https_port: None,
            shutdown_grace: None,
            admin_listen: Some("127.0.0.1:0".into()),
        };
        Ok(Config {
            source: None,
            server: server(&check, raw_server)?,
            tls: Tls { cert, key },
            routing: routing(&check, raw::Routing::default())?,
            upstream: upstream(&check, raw::Upstream::default())?,
            limits: limits(&check, raw::Limits::default())?,
            placement: placement(&check, raw::Placement::default())?,
            health: health(&check, raw::Health::default())?,
            pins_snapshot: None,
            shared_pins: None,
            admin: Admin {
                token: None,
                open_metrics: false,
                allowed_hosts: Vec::new(),
            },
            log_format: LogFormat::Text,
            prometheus: None,
            nodes,
        })
    }
}

/// A node as the admin API receives it (`PUT /api/nodes/{name}`): the fields of a `[[nodes]]`
/// entry, and the `name` a node as `GET /api/nodes` lists it carries (the caller checks it
/// against the path). Any other field is an error, so a misspelt one is not silently dropped.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFields {
    /// The node's name, when the body carries it.
    pub name: Option<String>,
    /// Proxy target.
    pub upstream: String,
    /// Redirect-mode target.
    pub public_url: Option<String>,
    /// Prometheus label value.
    pub instance: Option<String>,
    /// colibri-ws server ids.
    pub jvb_server_ids: Option<Vec<String>>,
    /// Drain flag.
    pub drain: Option<bool>,
    /// Capacity relative to the other nodes.
    pub weight: Option<f64>,
}

impl NodeSpec {
    /// Validates a node from the admin API exactly as a `[[nodes]]` entry; errors name the field.
    pub fn from_fields(name: &str, fields: NodeFields, mode: Mode) -> Result<NodeSpec, String> {
        let check = Check {
            file: Path::new("(admin API)"),
        };
        let raw = raw::Node {
            name: name.to_owned(),
            upstream: fields.upstream,
            public_url: fields.public_url,
            instance: fields.instance,
            jvb_server_ids: fields.jvb_server_ids,
            drain: fields.drain,
            weight: fields.weight,
        };
        match nodes(&check, vec![raw], mode) {
            Ok(mut specs) => Ok(specs.remove(0)),
            Err(ConfigError::Invalid {
                key,
                value,
                problem,
                ..
            }) => Err(format!(
                "{} = {value}: {problem}",
                key.trim_start_matches("nodes[0].")
            )),
            Err(other) => Err(other.to_string()),
        }
    }

    /// A node spec for code that builds fleets (demo, tests): instance defaults to the upstream's authority.
    pub fn new(name: &str, upstream: &str) -> Result<NodeSpec, ConfigError> {
        let check = Check {
            file: Path::new("(built-in)"),
        };
        let upstream = check.http_url("nodes.upstream", upstream, false)?;
        Ok(NodeSpec {
            name: name.to_owned(),
            instance: upstream
                .authority()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            upstream,
            public_url: None,
            jvb_server_ids: vec![name.to_owned()],
            drain: false,
            weight: 1.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MINIMAL: &str = r#"
[server]
listen = "127.0.0.1:8443"
[tls]
cert = "../certs/fullchain.pem"
key = "/etc/key.pem"
[[nodes]]
name = "jitsi-1"
upstream = "http://10.0.0.11:80"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("/etc/jitsi-router/router.toml"))
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn defaults_and_relative_paths() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(
            c.tls.cert,
            Path::new("/etc/jitsi-router/../certs/fullchain.pem")
        );
        assert_eq!(c.tls.key, Path::new("/etc/key.pem"));
        assert_eq!(c.routing.mode, Mode::Proxy);
        assert_eq!(c.routing.pin_idle_timeout, Duration::from_secs(600));
        assert!(c.upstream.response_timeout >= Duration::from_secs(90));
        assert_eq!(c.limits.max_request_head, 16384);
        assert_eq!(c.nodes[0].jvb_server_ids, ["jitsi-1"]);
        assert_eq!(c.nodes[0].instance, "10.0.0.11:80");
        assert_eq!(c.nodes[0].weight, 1.0);
        assert_eq!(c.limits.max_pins, 2_000_000);
        assert!(c.prometheus.is_none());
    }

    #[test]
    fn shared_pins_take_a_redis_url_and_defaults() {
        assert!(parse(MINIMAL).unwrap().shared_pins.is_none());
        let text = MINIMAL.replace(
            "[tls]",
            "[pins.redis]\nurl = \"redis://:pw@10.0.0.9:6379/1\"\n[tls]",
        );
        let shared = parse(&text).unwrap().shared_pins.unwrap();
        assert_eq!(shared.url, "redis://:pw@10.0.0.9:6379/1");
        assert_eq!(shared.prefix, "jitsi-router:pin:");
        assert_eq!(shared.timeout, Duration::from_millis(250));
        assert_eq!(shared.sync_interval, Duration::from_secs(5));
        for (section, message) in [
            (
                "url = \"https://10.0.0.9\"",
                r#"pins.redis.url = "https://10.0.0.9": must start with redis:// or unix:// (TLS to Redis is not built in)"#,
            ),
            (
                "url = \"redis://10.0.0.9:notaport\"",
                r#"pins.redis.url = "redis://10.0.0.9:notaport": not a Redis URL"#,
            ),
            (
                "url = \"redis://h\"\nprefix = \"\"",
                r#"pins.redis.prefix = "": must not be empty"#,
            ),
            (
                "url = \"redis://h\"\nsync_interval = \"0s\"",
                r#"pins.redis.sync_interval = "0s": must be greater than zero"#,
            ),
            ("urls = \"redis://h\"", "unknown field `urls`"),
        ] {
            let e = error(&MINIMAL.replace("[tls]", &format!("[pins.redis]\n{section}\n[tls]")));
            assert!(e.contains(message), "{e}");
        }
    }

    #[test]
    fn errors_name_file_key_and_value() {
        let e = error(&MINIMAL.replace("[tls]", "[routing]\nmode = \"fast\"\n[tls]"));
        assert_eq!(
            e,
            r#"/etc/jitsi-router/router.toml: routing.mode = "fast": must be "proxy" or "redirect""#
        );
        let e = error(&MINIMAL.replace(
            "[tls]",
            "[routing]\npin_idle_timeout = \"10 parsecs\"\n[tls]",
        ));
        assert!(
            e.contains("routing.pin_idle_timeout = \"10 parsecs\": not a duration"),
            "{e}"
        );
        let e = error(&MINIMAL.replace("127.0.0.1:8443", "localhost"));
        assert!(e.contains("server.listen = \"localhost\""), "{e}");
        let e = error(&MINIMAL.replace("http://10.0.0.11:80", "ftp://x"));
        assert!(e.contains("nodes[0].upstream = \"ftp://x\""), "{e}");
        let e = error(&MINIMAL.replace("name = \"jitsi-1\"", "name = \"jitsi-1\"\nweight = -2.0"));
        assert!(e.contains("nodes[0].weight = -2.0: must be above 0"), "{e}");
        let e = error(&MINIMAL.replace("[tls]", "[limits]\nmax_pins = 0\n[tls]"));
        assert!(e.contains("limits.max_pins = 0: must be at least 1"), "{e}");
    }

    #[test]
    fn unknown_keys_are_errors_with_a_line() {
        let e = error(&MINIMAL.replace("[tls]", "[routing]\nmoed = \"proxy\"\n[tls]"));
        assert!(e.starts_with("/etc/jitsi-router/router.toml:"), "{e}");
        assert!(e.contains("unknown field `moed`"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn wrong_types_name_the_key() {
        let e = error(&MINIMAL.replace("name = \"jitsi-1\"", "name = 5"));
        assert!(e.contains("nodes[0].name"), "{e}");
    }

    #[test]
    fn duplicate_names_and_server_ids_are_rejected() {
        let twice =
            format!("{MINIMAL}\n[[nodes]]\nname = \"jitsi-1\"\nupstream = \"http://10.0.0.12\"\n");
        assert!(error(&twice).contains("nodes[1].name = \"jitsi-1\": another node"));
        let ids = format!("{MINIMAL}\n[[nodes]]\nname = \"jitsi-2\"\nupstream = \"http://10.0.0.12\"\njvb_server_ids = [\"jitsi-1\"]\n");
        assert!(error(&ids).contains("already served by node \"jitsi-1\""));
    }

    #[test]
    fn redirect_mode_needs_public_urls() {
        let e = error(&MINIMAL.replace("[tls]", "[routing]\nmode = \"redirect\"\n[tls]"));
        assert!(e.contains("nodes[0].public_url"), "{e}");
    }

    #[test]
    fn prometheus_defaults() {
        let c = parse(&format!(
            "{MINIMAL}\n[prometheus]\nurl = \"http://127.0.0.1:9090/\"\n"
        ))
        .unwrap();
        let p = c.prometheus.unwrap();
        assert_eq!(p.url, "http://127.0.0.1:9090");
        assert_eq!(p.query, DEFAULT_QUERY);
        assert_eq!(p.interval, Duration::from_secs(30));
        assert_eq!(p.max_staleness, Duration::from_secs(90));
    }

    /// Keys of every section, and a value an attacker or a typo might give each.
    const KEYS: &[(&str, &str)] = &[
        ("server", "listen"),
        ("server", "http_listen"),
        ("server", "public_https_port"),
        ("server", "shutdown_grace"),
        ("server", "admin_listen"),
        ("routing", "mode"),
        ("routing", "pin_idle_timeout"),
        ("routing", "affinity_cookie"),
        ("upstream", "connect_timeout"),
        ("upstream", "response_timeout"),
        ("upstream", "pool_max_idle_per_node"),
        ("upstream", "ca"),
        ("limits", "max_request_head"),
        ("limits", "request_head_timeout"),
        ("limits", "max_connections"),
        ("limits", "max_connections_per_client"),
        ("limits", "new_rooms_per_second"),
        ("limits", "new_room_burst"),
        ("limits", "h2_max_concurrent_streams"),
        ("placement", "max_cpu"),
        ("placement", "balance_factor"),
        ("health", "fall"),
        ("health", "interval"),
        ("admin", "token"),
        ("admin", "allowed_hosts"),
        ("prometheus", "url"),
        ("prometheus", "interval"),
        ("pins", "snapshot_path"),
    ];

    fn hostile_value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| format!("{f:?}")),
            Just("nan".to_owned()),
            Just("-inf".to_owned()),
            Just("true".to_owned()),
            Just("[]".to_owned()),
            Just("[\"\"]".to_owned()),
            Just("{}".to_owned()),
            "\\PC{0,40}".prop_map(|text| toml::Value::String(text).to_string()),
            "[0-9]{1,30}(ns|ms|s|m|h|d|y)?".prop_map(|text| toml::Value::String(text).to_string()),
        ]
    }

    proptest::proptest! {
        /// Whatever the file holds, loading it ends in a config or an error naming the file;
        /// never a panic.
        #[test]
        fn any_text_loads_or_names_the_file(text in "\\PC{0,300}") {
            if let Err(e) = parse(&text) {
                proptest::prop_assert!(e.to_string().starts_with("/etc/jitsi-router/router.toml"), "{e}");
            }
        }

        /// A hostile value for a known key is taken or rejected with the file and the key.
        #[test]
        fn hostile_values_name_their_key(at in 0..KEYS.len(), value in hostile_value()) {
            let (section, key) = KEYS[at];
            let base = MINIMAL.replace(&format!("[{section}]\n"), "");
            let existing = MINIMAL
                .split("\n[")
                .find(|part| part.starts_with(&format!("{section}]")))
                .map(|part| part.trim_start_matches(&format!("{section}]")).to_owned())
                .unwrap_or_default();
            let base = base.replace(existing.trim(), "");
            let own = existing
                .lines()
                .filter(|line| !line.starts_with(&format!("{key} ")))
                .collect::<Vec<_>>()
                .join("\n");
            let text = format!("{base}\n[{section}]\n{own}\n{key} = {value}\n");
            match parse(&text) {
                Ok(_) => {}
                Err(e) => {
                    let message = e.to_string();
                    proptest::prop_assert!(message.starts_with("/etc/jitsi-router/router.toml"), "{message}");
                    proptest::prop_assert!(
                        message.contains(key) || message.contains(section),
                        "{text}\n{message}"
                    );
                }
            }
        }
    }
}
