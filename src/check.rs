//! `jitsi-router check`: a config loaded as `serve` would load it, the files it names read (the
//! certificate and key, the CAs, a `rediss://` store's TLS files), and what was understood, a
//! section to a line. Nothing is connected to, unless `--probe` asks: then each node gets its
//! health checks and census poll once, Prometheus the CPU query and the shared pin store a
//! question, and what each answered is printed, a line each (see [`probe`]).

use std::fmt::{self, Write};
use std::path::Path;

use futures_util::future::join_all;
use humantime::format_duration;

use crate::config::{Config, NodeSpec};
use crate::fleet::{census, health, prometheus, Fleet, Node};
use crate::placement::shared::{redacted, SharedPins};
use crate::room::RoomLimits;
use crate::tls::{load_certified_key, upstream_client_config};

/// The config at `path`, checked, with the files it names read; an error names the file, key
/// and value.
pub fn load(path: &Path) -> Result<Config, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    read_files(&config)?;
    Ok(config)
}

/// Reads what the config names besides itself, as start-up would.
fn read_files(config: &Config) -> Result<(), String> {
    match &config.tls.acme {
        Some(acme) => {
            if let Some(ca) = &acme.directory_ca {
                upstream_client_config(Some(ca))
                    .map_err(|e| format!("tls.acme.directory_ca: {e}"))?;
            }
        }
        None => {
            load_certified_key(&config.tls.cert, &config.tls.key).map_err(|e| e.to_string())?;
        }
    }
    if let Some(ca) = &config.upstream.ca {
        upstream_client_config(Some(ca)).map_err(|e| e.to_string())?;
    }
    if let Some(redis) = &config.pins.redis {
        // Reads the TLS files of a `rediss://` store; connects to nothing.
        SharedPins::new(redis, config.routing.pin_idle_timeout)
            .map_err(|e| format!("pins.redis: {e}"))?;
    }
    Ok(())
}

/// What `check` prints of a loaded config.
pub fn describe(c: &Config, path: &Path) -> String {
    let mut out = String::new();
    let sections = [
        listeners, tls, routing, pins, upstream, placement, health, prometheus, nodes,
    ];
    // Writing to a `String` cannot fail.
    let _ = writeln!(out, "{}: OK", path.display())
        .and_then(|()| sections.iter().try_for_each(|section| section(&mut out, c)));
    out
}

/// The listeners, the admin listener and the log format.
fn listeners(out: &mut String, c: &Config) -> fmt::Result {
    let s = &c.server;
    let listen: Vec<String> = s.listen.iter().map(ToString::to_string).collect();
    writeln!(out, "listen:      https on {}", listen.join(", "))?;
    if s.websockets_over_http2 {
        writeln!(
            out,
            "             WebSockets over HTTP/2 offered (RFC 8441)"
        )?;
    }
    if let Some(http) = s.http_listen {
        let port = s.public_https_port();
        writeln!(
            out,
            "             http on {http} (308 to https, port {port})"
        )?;
    }
    let token = match c.admin.token {
        Some(_) => "bearer token required",
        None => "no token: keep it on loopback",
    };
    let (admin, logs) = (s.admin_listen, c.log.format);
    writeln!(
        out,
        "admin:       http on {admin} ({token}); logs as {logs}"
    )
}

fn tls(out: &mut String, c: &Config) -> fmt::Result {
    match &c.tls.acme {
        Some(acme) => writeln!(
            out,
            "tls:         ACME for {} from {} ({} challenge), kept in {}",
            acme.domains.join(", "),
            acme.directory,
            acme.challenge,
            acme.state_dir.display()
        ),
        None => writeln!(
            out,
            "tls:         cert {}, key {} (they match)",
            c.tls.cert.display(),
            c.tls.key.display()
        ),
    }
}

fn routing(out: &mut String, c: &Config) -> fmt::Result {
    let r = &c.routing;
    writeln!(
        out,
        "mode:        {} (pins forgotten after {} idle, affinity cookie {:?})",
        r.mode,
        format_duration(r.pin_idle_timeout),
        r.affinity_cookie
    )
}

/// Where pins are kept: this router's memory, a Redis shared with other replicas, a snapshot.
fn pins(out: &mut String, c: &Config) -> fmt::Result {
    let shared = match &c.pins.redis {
        Some(r) => {
            let found = match r.sentinels.as_slice() {
                [] if r.cluster => ", a node of a Redis Cluster".to_owned(),
                [] => String::new(),
                sentinels => format!(
                    ", its host the primary Sentinel names ({})",
                    sentinels.join(", ")
                ),
            };
            let keys = match r.cluster {
                true => format!("{{{}}}", r.prefix),
                false => r.prefix.clone(),
            };
            format!(
                "shared with other replicas through {}{found} (keys {keys}…, timeout {}, synced every {})",
                redacted(&r.url),
                format_duration(r.timeout),
                format_duration(r.sync_interval)
            )
        }
        None => "this router's memory only".to_owned(),
    };
    let snapshot = c.pins.snapshot_path.as_ref().map_or(String::new(), |path| {
        format!(", saved to {} on shutdown", path.display())
    });
    writeln!(out, "pins:        {shared}{snapshot}")
}

fn upstream(out: &mut String, c: &Config) -> fmt::Result {
    let u = &c.upstream;
    let host = match u.preserve_host {
        true => "kept",
        false => "set to the node's",
    };
    writeln!(
        out,
        "upstream:    connect timeout {}, response timeout {}, host header {host}",
        format_duration(u.connect_timeout),
        format_duration(u.response_timeout),
    )
}

fn placement(out: &mut String, c: &Config) -> fmt::Result {
    let p = &c.placement;
    let cost = p
        .room_cost
        .map_or("learned".to_owned(), |cost| cost.to_string());
    writeln!(
        out,
        "placement:   max_cpu {}, balance_factor {}, room_cost {cost}",
        p.max_cpu, p.balance_factor
    )
}

fn health(out: &mut String, c: &Config) -> fmt::Result {
    let h = &c.health;
    writeln!(
        out,
        "health:      GET {} every {} (timeout {}, fall {}, rise {})",
        h.path,
        format_duration(h.interval),
        format_duration(h.timeout()),
        h.fall,
        h.rise
    )?;
    match h.caveat() {
        Some(why) => writeln!(out, "             warning: health.path {}: {why}", h.path),
        None => Ok(()),
    }
}

fn prometheus(out: &mut String, c: &Config) -> fmt::Result {
    let Some(p) = &c.prometheus else {
        let without = "all nodes count as equally loaded; rooms spread by hashing";
        return writeln!(out, "prometheus:  none ({without})");
    };
    writeln!(
        out,
        "prometheus:  {} every {} (label {:?}, stale after {})\n             query {}",
        p.url,
        format_duration(p.interval),
        p.label,
        format_duration(p.max_staleness()),
        p.query
    )
}

fn nodes(out: &mut String, c: &Config) -> fmt::Result {
    writeln!(out, "nodes:       {}", c.nodes.len())?;
    c.nodes.iter().try_for_each(|n| node(out, c, n))
}

/// A node's line, and a line for each of its size, census and extra checks.
fn node(out: &mut String, c: &Config, n: &NodeSpec) -> fmt::Result {
    writeln!(
        out,
        "  {:<16} upstream {}  public {}  instance {}  bridges {}{}",
        n.name,
        n.upstream,
        n.public_url.as_deref().unwrap_or("-"),
        n.instance,
        n.jvb_server_ids.join(","),
        if n.drain { "  (draining)" } else { "" }
    )?;
    let more = |out: &mut String, text: fmt::Arguments| writeln!(out, "  {:<16} {text}", "");
    let mut size = Vec::new();
    if n.weight != 1.0 {
        size.push(format!("weight {}", n.weight));
    }
    if let Some(rooms) = n.max_rooms {
        size.push(format!("full at {rooms} rooms"));
    }
    if let Some(people) = n.max_participants {
        size.push(format!("full at {people} participants"));
    }
    if !size.is_empty() {
        more(out, format_args!("{}", size.join(", ")))?;
    }
    if let Some(url) = &n.census_url {
        let every = format_duration(c.census.interval);
        more(out, format_args!("census GET {url} every {every}"))?;
    }
    for extra in &n.health_checks {
        more(
            out,
            format_args!("health also GET {} → {}", extra.url, extra.status),
        )?;
    }
    if let Some(url) = &n.signal_report {
        more(
            out,
            format_args!("health and drain by its signal-sidecar: GET {url}"),
        )?;
    }
    Ok(())
}

/// What `--probe` found: the lines to print, and how many probes failed.
pub struct Probed {
    /// A line per node and probe.
    pub text: String,
    /// Probes that failed.
    pub failed: usize,
}

/// Asks what `serve` would ask, once: each node's health checks (`[health] path`, its
/// `health_checks` and `signal_report`) and census, Prometheus the CPU query, saying for each
/// node whether a series matched its `instance`, and the shared pin store for a key. Nothing is
/// recorded, pinned or written.
pub async fn probe(config: &Config) -> Result<Probed, String> {
    let client = health::client(config.upstream.ca.as_deref()).map_err(|e| e.to_string())?;
    let fleet = Fleet::new(config.nodes.clone(), std::time::Duration::MAX);
    let state = fleet.snapshot();
    let nodes = state.nodes();
    let mut probed = Probed {
        text: "probe:\n".to_owned(),
        failed: 0,
    };
    let mut line = |node: &str, what: &str, outcome: Result<String, String>| {
        let said = match outcome {
            Ok(fine) => fine,
            Err(failure) => {
                probed.failed += 1;
                format!("FAILED, {failure}")
            }
        };
        let _ = writeln!(probed.text, "  {node:<16} {what:<7} {said}");
    };
    let checks = nodes.iter().map(|node| async {
        let health = health::check_once(&client, node, &config.health).await;
        (
            health.map(|()| "passed".to_owned()),
            census_of(&client, node, config).await,
        )
    });
    for (node, (health, census)) in nodes.iter().zip(join_all(checks).await) {
        line(node.id.as_str(), "health", health);
        if let Some(census) = census {
            line(node.id.as_str(), "census", census);
        }
    }
    if let Some(cfg) = &config.prometheus {
        let client = reqwest::Client::builder().no_proxy().build();
        let client = client.map_err(|e| format!("cannot build the Prometheus client: {e}"))?;
        let reading = prometheus::query(&client, cfg, prometheus::unix_now()).await;
        match reading {
            Err(e) => line("prometheus", "query", Err(e.to_string())),
            Ok(reading) => {
                for node in nodes {
                    line(node.id.as_str(), "cpu", cpu_of(node, &cfg.label, &reading));
                }
            }
        }
    }
    if let Some(redis) = &config.pins.redis {
        line("redis", "store", store_of(redis, config).await);
    }
    Ok(probed)
}

/// The shared pin store connected to (through its sentinels or cluster, as configured) and
/// asked for one key, as placement asks it for a room.
async fn store_of(redis: &crate::config::SharedPins, config: &Config) -> Result<String, String> {
    let shared = SharedPins::new(redis, config.routing.pin_idle_timeout);
    let shared = shared.map_err(|e| e.to_string())?;
    shared.connect(false).await.map_err(|e| e.to_string())?;
    let asked = shared.held("jitsi-router-check-probe").await;
    asked.map_err(|e| e.to_string())?;
    Ok(format!(
        "answered ({})",
        shared.connected_to().unwrap_or_default()
    ))
}

/// A node's census polled once, when it names one: how many rooms are live there.
async fn census_of(
    client: &reqwest::Client,
    node: &Node,
    config: &Config,
) -> Option<Result<String, String>> {
    let url = node.spec.census_url.as_deref()?;
    let limits = RoomLimits {
        max_chars: config.limits.max_room_chars,
    };
    let rooms = census::fetch(client, url, config.census.timeout(), &limits).await;
    Some(match rooms {
        Ok(rooms) => Ok(format!("{} live rooms", rooms.len())),
        Err(e) => Err(format!("GET {url}: {e}")),
    })
}

/// A node's busy CPU in a Prometheus answer, or why the answer gives it none.
fn cpu_of(node: &Node, label: &str, reading: &prometheus::Reading) -> Result<String, String> {
    let instance = &node.spec.instance;
    if let Some(busy) = reading.busy.get(instance) {
        return Ok(format!("{:.0} % busy", busy * 100.0));
    }
    Err(match reading.unusable.iter().find(|(i, _)| i == instance) {
        Some((_, value)) => {
            format!("{instance}: {value} is not a busy value (check prometheus.scale and query)")
        }
        None => no_series(label, instance, reading),
    })
}

/// Why a node got no reading: no series carries its `instance`, and the values that do come.
fn no_series(label: &str, instance: &str, reading: &prometheus::Reading) -> String {
    let mut answered: Vec<&str> = (reading.busy.keys().map(String::as_str))
        .chain(reading.unusable.iter().map(|(i, _)| i.as_str()))
        .collect();
    answered.sort_unstable();
    answered.truncate(5);
    match answered.is_empty() {
        true => format!("no series with {label}=\"{instance}\"; the query answered none"),
        false => format!(
            "no series with {label}=\"{instance}\"; {label} values answered: {} (set [[nodes]] instance to this node's)",
            answered.join(", ")
        ),
    }
}
