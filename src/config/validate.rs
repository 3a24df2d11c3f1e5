//! What serde cannot check: ranges, formats, rules across keys, defaults that follow from other
//! values, and paths relative to the config file.

use std::net::SocketAddr;
use std::path::Path;

use super::check::Check;
use super::{Config, ConfigError, SharedPins, ADMIN_TOKEN_ENV};

impl Config {
    /// Checks what serde cannot: ranges, formats, and rules across keys; fills the defaults that
    /// depend on other values and resolves relative paths against the folder of `file`.
    pub fn validate(&mut self, file: &Path) -> Result<(), ConfigError> {
        let check = Check { file };
        if self.server.listen.is_empty() {
            return Err(check.invalid("server.listen", "[]", "needs at least one address"));
        }
        self.server.check_listeners(&check)?;
        self.files(&check)?;
        self.public_edge(&check)?;
        self.durations(&check)?;
        self.limits.check(&check)?;
        self.placement(&check)?;
        self.health(&check)?;
        self.admin(&check)?;
        self.sources(&check)?;
        self.check_nodes(&check)
    }

    /// The certificate and key, or `[tls.acme]`, and the other files named, resolved against
    /// the config file's folder.
    fn files(&mut self, check: &Check) -> Result<(), ConfigError> {
        match &mut self.tls.acme {
            None => {
                for (key, path) in [
                    ("tls.cert", &mut self.tls.cert),
                    ("tls.key", &mut self.tls.key),
                ] {
                    if path.as_os_str().is_empty() {
                        let problem =
                            "required: a PEM file, unless [tls.acme] gets the certificate";
                        return Err(check.invalid(key, "", problem));
                    }
                    check.resolve(key, path)?;
                }
            }
            Some(acme) => {
                for (key, path) in [("tls.cert", &self.tls.cert), ("tls.key", &self.tls.key)] {
                    if !path.as_os_str().is_empty() {
                        let problem = "set either tls.cert and tls.key, or [tls.acme], not both";
                        return Err(check.invalid(key, path, problem));
                    }
                }
                super::acme::check(check, acme, self.server.http_listen.is_some())?;
            }
        }
        let optional = [
            ("upstream.ca", &mut self.upstream.ca),
            ("pins.snapshot_path", &mut self.pins.snapshot_path),
            ("server.acme_webroot", &mut self.server.acme_webroot),
        ];
        for (key, path) in optional {
            path.as_mut()
                .map(|path| check.resolve(key, path))
                .transpose()?;
        }
        Ok(())
    }

    /// What the router says to and accepts from the public: the affinity cookie's name, the
    /// PROXY protocol's senders, HSTS.
    fn public_edge(&self, check: &Check) -> Result<(), ConfigError> {
        let token_char = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        let cookie = &self.routing.affinity_cookie;
        if cookie.is_empty() || !cookie.bytes().all(token_char) {
            return Err(check.invalid(
                "routing.affinity_cookie",
                cookie,
                "not a valid cookie name",
            ));
        }
        let server = &self.server;
        if server.proxy_protocol && server.trusted_proxies.is_empty() {
            let problem = "server.proxy_protocol = true needs the balancers' addresses in server.trusted_proxies";
            return Err(check.invalid("server.trusted_proxies", Vec::<String>::new(), problem));
        }
        if let Some(hsts) = &server.hsts {
            let valid = hsts.starts_with("max-age=") && http::HeaderValue::from_str(hsts).is_ok();
            if !valid {
                let problem = "must be a Strict-Transport-Security value like \"max-age=31536000\"";
                return Err(check.invalid("server.hsts", hsts, problem));
            }
        }
        Ok(())
    }

    /// The shared pin store and Prometheus.
    fn sources(&mut self, check: &Check) -> Result<(), ConfigError> {
        if let Some(redis) = &mut self.pins.redis {
            redis_url(check, redis)?;
        }
        if let Some(p) = &mut self.prometheus {
            check.http_url("prometheus.url", &p.url, true)?;
            p.url = p.url.trim_end_matches('/').to_owned();
            for (key, value) in [
                ("prometheus.query", &p.query),
                ("prometheus.label", &p.label),
            ] {
                if value.trim().is_empty() {
                    return Err(check.invalid(key, value, "must not be empty"));
                }
            }
        }
        Ok(())
    }

    /// Each node, and names and bridge ids that two nodes claim.
    fn check_nodes(&mut self, check: &Check) -> Result<(), ConfigError> {
        let mut nodes = std::mem::take(&mut self.nodes);
        for (i, node) in nodes.iter_mut().enumerate() {
            node.validate(check, &format!("nodes[{i}]"), self.routing.mode)?;
        }
        for (i, node) in nodes.iter().enumerate() {
            let earlier = &nodes[..i];
            if earlier.iter().any(|n| n.name == node.name) {
                let key = format!("nodes[{i}].name");
                return Err(check.invalid(&key, &node.name, "another node already has this name"));
            }
            for id in &node.jvb_server_ids {
                if let Some(other) = earlier.iter().find(|n| n.jvb_server_ids.contains(id)) {
                    let problem = format!("already served by node {:?}", other.name);
                    let key = format!("nodes[{i}].jvb_server_ids");
                    return Err(check.invalid(&key, id, problem));
                }
            }
        }
        self.nodes = nodes;
        Ok(())
    }

    fn durations(&self, check: &Check) -> Result<(), ConfigError> {
        let (l, u) = (&self.limits, &self.upstream);
        let mut durations = vec![
            ("server.shutdown_grace", self.server.shutdown_grace),
            ("routing.pin_idle_timeout", self.routing.pin_idle_timeout),
            ("upstream.connect_timeout", u.connect_timeout),
            ("upstream.response_timeout", u.response_timeout),
            ("upstream.pool_idle_timeout", u.pool_idle_timeout),
            ("limits.tls_handshake_timeout", l.tls_handshake_timeout),
            ("limits.request_head_timeout", l.request_head_timeout),
            ("limits.keepalive_timeout", l.keepalive_timeout),
            ("limits.request_body_timeout", l.request_body_timeout),
            ("limits.response_body_timeout", l.response_body_timeout),
            ("limits.send_timeout", l.send_timeout),
            ("limits.retry_after", l.retry_after),
            ("health.interval", self.health.interval),
            ("health.timeout", self.health.timeout()),
            ("census.interval", self.census.interval),
        ];
        if let Some(r) = &self.pins.redis {
            durations.extend([
                ("pins.redis.timeout", r.timeout),
                ("pins.redis.sync_interval", r.sync_interval),
            ]);
        }
        if let Some(p) = &self.prometheus {
            durations.extend([
                ("prometheus.interval", p.interval),
                ("prometheus.timeout", p.timeout()),
                ("prometheus.max_staleness", p.max_staleness()),
            ]);
        }
        match durations.into_iter().find(|(_, d)| d.is_zero()) {
            Some((key, _)) => Err(check.invalid(key, "0s", "must be greater than zero")),
            None => Ok(()),
        }
    }

    fn placement(&self, check: &Check) -> Result<(), ConfigError> {
        let p = &self.placement;
        if !(p.max_cpu > 0.0 && p.max_cpu <= 1.0) {
            let problem = "must be a busy fraction in (0, 1]";
            return Err(check.invalid("placement.max_cpu", p.max_cpu, problem));
        }
        if !(1.0..=100.0).contains(&p.balance_factor) {
            let problem = "must be between 1.0 and 100";
            return Err(check.invalid("placement.balance_factor", p.balance_factor, problem));
        }
        match p.room_cost {
            Some(cost) if !(0.0..=1.0).contains(&cost) => {
                let problem = "must be a busy fraction per room in [0, 1]";
                Err(check.invalid("placement.room_cost", cost, problem))
            }
            _ => Ok(()),
        }
    }

    fn health(&self, check: &Check) -> Result<(), ConfigError> {
        let path = &self.health.path;
        if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
            return Err(check.invalid("health.path", path, "must be a path starting with '/'"));
        }
        for (key, value) in [
            ("health.fall", self.health.fall),
            ("health.rise", self.health.rise),
        ] {
            if value == 0 {
                return Err(check.invalid(key, value, "must be at least 1"));
            }
        }
        Ok(())
    }

    fn admin(&mut self, check: &Check) -> Result<(), ConfigError> {
        let env = std::env::var(ADMIN_TOKEN_ENV)
            .ok()
            .filter(|t| !t.is_empty());
        let admin = &mut self.admin;
        admin.token = env.or(admin.token.take());
        if admin.token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(check.invalid("admin.token", "(hidden)", "use at least 16 characters"));
        }
        let listen = self.server.admin_listen;
        if admin.token.is_none() && !listen.ip().is_loopback() {
            let problem =
                format!("an admin listener off loopback needs [admin] token or {ADMIN_TOKEN_ENV}");
            return Err(check.invalid("server.admin_listen", listen.to_string(), problem));
        }
        for host in &mut admin.allowed_hosts {
            let valid = !host.is_empty()
                && host.len() <= 253
                && (host.bytes()).all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'));
            if !valid {
                let problem =
                    "must be a host name (letters, digits, '-' and '.'), without port or scheme";
                return Err(check.invalid("admin.allowed_hosts", &host, problem));
            }
            host.make_ascii_lowercase();
        }
        Ok(())
    }
}

fn redis_url(check: &Check, redis: &mut SharedPins) -> Result<(), ConfigError> {
    use redis::IntoConnectionInfo;
    let url = &redis.url;
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    if !matches!(scheme, "redis" | "rediss" | "unix" | "redis+unix") {
        let problem = "must start with redis://, rediss:// (TLS) or unix://";
        return Err(check.invalid("pins.redis.url", url, problem));
    }
    if url.contains('#') {
        let problem = "takes no #fragment (certificate checks stay on: give the server's CA in pins.redis.ca)";
        return Err(check.invalid("pins.redis.url", url, problem));
    }
    if let Err(e) = url.as_str().into_connection_info() {
        return Err(check.invalid("pins.redis.url", url, format!("not a Redis URL ({e})")));
    }
    let files = [
        ("pins.redis.ca", &mut redis.ca),
        ("pins.redis.client_cert", &mut redis.client_cert),
        ("pins.redis.client_key", &mut redis.client_key),
    ];
    for (key, path) in files {
        let Some(path) = path else { continue };
        if scheme != "rediss" {
            return Err(check.invalid(key, &*path, "only for a rediss:// url (TLS)"));
        }
        check.resolve(key, path)?;
    }
    match (&redis.client_cert, &redis.client_key) {
        (Some(cert), None) => {
            let problem = "needs pins.redis.client_key, its private key";
            return Err(check.invalid("pins.redis.client_cert", cert, problem));
        }
        (None, Some(key)) => {
            let problem = "needs pins.redis.client_cert, the certificate it belongs to";
            return Err(check.invalid("pins.redis.client_key", key, problem));
        }
        _ => {}
    }
    if redis.prefix.is_empty() {
        return Err(check.invalid("pins.redis.prefix", &redis.prefix, "must not be empty"));
    }
    sentinels(check, redis, scheme)?;
    cluster(check, redis, scheme)
}

/// `pins.redis.cluster`: a `redis://` or `rediss://` url of one node, database 0 (the only one
/// a cluster has), and no sentinels.
fn cluster(check: &Check, redis: &SharedPins, scheme: &str) -> Result<(), ConfigError> {
    use redis::IntoConnectionInfo;
    if !redis.cluster {
        return Ok(());
    }
    if !redis.sentinels.is_empty() {
        let problem = "a cluster fails over by itself: give sentinels or cluster, not both";
        return Err(check.invalid("pins.redis.cluster", true, problem));
    }
    if !matches!(scheme, "redis" | "rediss") {
        let problem =
            "with pins.redis.cluster, must be redis:// or rediss:// naming a node of the cluster";
        return Err(check.invalid("pins.redis.url", &redis.url, problem));
    }
    let db =
        (redis.url.as_str().into_connection_info()).map_or(0, |info| info.redis_settings().db());
    if db != 0 {
        let problem = "a Redis Cluster has database 0 only: leave the /<db> out";
        return Err(check.invalid("pins.redis.url", &redis.url, problem));
    }
    Ok(())
}

/// `pins.redis.sentinels`: `host:port` each, for a `redis://` or `rediss://` url whose host
/// names the primary.
fn sentinels(check: &Check, redis: &SharedPins, scheme: &str) -> Result<(), ConfigError> {
    if redis.sentinels.is_empty() {
        if redis.sentinel_password.is_some() {
            let problem = "only with pins.redis.sentinels";
            return Err(check.invalid("pins.redis.sentinel_password", "***", problem));
        }
        return Ok(());
    }
    if !matches!(scheme, "redis" | "rediss") {
        let problem = "with pins.redis.sentinels, must be redis:// or rediss:// whose host is the name the sentinels monitor";
        return Err(check.invalid("pins.redis.url", &redis.url, problem));
    }
    for sentinel in &redis.sentinels {
        let valid = sentinel.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !valid {
            let problem = "must be host:port, such as \"10.0.0.5:26379\"";
            return Err(check.invalid("pins.redis.sentinels", sentinel, problem));
        }
    }
    Ok(())
}

impl super::Server {
    /// No two listeners of the router take the same address and port: the second could not be
    /// bound ("address in use"). A wildcard (`0.0.0.0`, `[::]`) takes every address of its
    /// family; `[::]` beside an IPv4 address of its port is bound IPv6-only, so the two do not
    /// meet. Port 0 (any free port) never clashes.
    fn check_listeners(&self, check: &Check) -> Result<(), ConfigError> {
        let keyed: Vec<(&str, SocketAddr)> = (self.listen.iter())
            .map(|&addr| ("server.listen", addr))
            .chain(self.http_listen.map(|addr| ("server.http_listen", addr)))
            .chain([("server.admin_listen", self.admin_listen)])
            .collect();
        let clash = |a: SocketAddr, b: SocketAddr| {
            a.port() == b.port()
                && a.port() != 0
                && a.is_ipv4() == b.is_ipv4()
                && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
        };
        for (i, &(key, addr)) in keyed.iter().enumerate() {
            if let Some(&(first, taken)) = keyed[..i].iter().find(|(_, a)| clash(*a, addr)) {
                let problem = format!("{first} {taken} takes that address and port already");
                return Err(check.invalid(key, addr.to_string(), problem));
            }
        }
        Ok(())
    }
}
