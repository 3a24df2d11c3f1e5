//! `jitsi-router check`: a config loaded as `serve` would load it, the files it names read (the
//! certificate and key, the CAs, a `rediss://` store's TLS files), and what was understood, a
//! section to a line. Nothing is connected to.

use std::fmt::{self, Write};
use std::path::Path;

use humantime::format_duration;

use crate::config::{Config, NodeSpec};
use crate::placement::shared::{redacted, SharedPins};
use crate::tls::{load_certified_key, upstream_client_config};

/// The config at `path` checked and described; an error names the file, key and value.
pub fn run(path: &Path) -> Result<String, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    read_files(&config)?;
    Ok(describe(&config, path))
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
