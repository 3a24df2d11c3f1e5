//! `jitsi-router demo`: a zero-setup fleet. Three simulated Jitsi nodes start in-process, a
//! self-signed certificate for `localhost` is written to a temporary folder, and the router serves
//! them on `https://localhost:8443`, printing which node each new room lands on.
//!
//! When Prometheus is installed, the demo also starts one that scrapes the nodes' CPU counters
//! every second, and the nodes run at different loads ([`NODE_BUSY`]), so new rooms are placed
//! by CPU as in a real fleet. Without it, placement falls back to rendezvous hashing within the
//! bounded load, as the router does whenever its CPU data are missing.

pub mod prometheus;
pub mod prosody;
mod relay;
pub mod sim_node;

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::{Config, NodeSpec};
use crate::server::{Server, StartError};
use prometheus::{PrometheusError, PrometheusServer};
pub use sim_node::SimNode;

/// Names of the demo's nodes.
pub const NODE_NAMES: [&str; 3] = ["jitsi-a", "jitsi-b", "jitsi-c"];
/// The busy CPU fraction each demo node reports, in the order of [`NODE_NAMES`].
pub const NODE_BUSY: [f64; 3] = [0.20, 0.45, 0.70];
/// How often the demo's Prometheus scrapes the nodes.
const SCRAPE_EVERY: Duration = Duration::from_secs(1);
/// How long the demo waits for Prometheus's first reading of every node.
const FIRST_READINGS_WITHIN: Duration = Duration::from_secs(15);
/// How often the demo's router reads CPU from Prometheus.
const READ_EVERY: Duration = Duration::from_secs(2);

/// The demo's CPU query: the default's, over the last two scrapes. The default's one-minute
/// `rate` divides by the whole minute, so for its first minute a fresh Prometheus reads every
/// node as almost fully busy.
const CPU_QUERY: &str =
    r#"1 - avg by (instance) (irate(node_cpu_seconds_total{mode="idle"}[10s]))"#;

/// Where Debian (or a local install) puts the program `name`, if it is installed.
fn installed(name: &str) -> Option<std::path::PathBuf> {
    ["/usr/bin", "/usr/local/bin"]
        .iter()
        .map(|dir| std::path::Path::new(dir).join(name))
        .find(|path| path.exists())
}

/// A command for the program at `binary`, started so that it dies with this process.
///
/// DESIGN note. The demo's Prometheus and prosody processes are stopped when the demo stops
/// (Ctrl-C, SIGTERM, SIGHUP). A demo killed outright (SIGKILL, the OOM killer, a crash) runs no
/// code on the way out, so the kernel must do it: `setpriv --pdeathsig KILL` (util-linux, on every
/// Debian system) sets the child's parent-death signal and then runs the program. The kernel
/// sends it when the *thread* that started the child exits, so start children from a thread that
/// lives as long as they should: the demo's main thread, a test's thread, or a runtime worker —
/// not a `spawn_blocking` thread, which exits when idle. Without `setpriv` the program runs
/// directly (and outlives a killed demo, as it did before).
///
/// Each runs in a process group of its own: Ctrl-C (SIGINT to the terminal's foreground group)
/// and a closed terminal (SIGHUP) reach the demo alone, which stops the router before its
/// Prometheus and prosody, so that nothing the router still asks of them fails on the way out.
fn dies_with_us(binary: &std::path::Path) -> std::process::Command {
    let mut command = match installed("setpriv") {
        Some(setpriv) => {
            let mut command = std::process::Command::new(setpriv);
            command.args(["--pdeathsig", "KILL", "--"]).arg(binary);
            command
        }
        None => std::process::Command::new(binary),
    };
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    command
}

/// The file in each of the demo's temporary folders naming the process that made it.
const OWNER_FILE: &str = "jitsi-router-demo.pid";

/// A temporary folder named `<prefix>XXXXXX`, marked with this process's id, so that a later
/// demo can remove it if this process dies without doing so (see [`remove_abandoned_folders`]).
fn temp_folder(prefix: &str) -> std::io::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
    std::fs::write(dir.path().join(OWNER_FILE), std::process::id().to_string())?;
    Ok(dir)
}

/// Removes the temporary folders of demos that were killed before they could (SIGKILL, a
/// crash): `jitsi-router-*` folders whose owner file names a process that no longer runs. A
/// folder without that file, or whose process runs (even if its id was reused), is left alone.
/// Only where `/proc` tells which processes run.
fn remove_abandoned_folders() {
    let proc = std::path::Path::new("/proc");
    if !proc.join("self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with("jitsi-router-")
        {
            continue;
        }
        let folder = entry.path();
        let Ok(owner) = std::fs::read_to_string(folder.join(OWNER_FILE)) else {
            continue;
        };
        let Ok(pid) = owner.trim().parse::<u32>() else {
            continue;
        };
        if !proc.join(pid.to_string()).exists() && std::fs::remove_dir_all(&folder).is_ok() {
            tracing::info!(folder = %folder.display(), "removed a killed demo's folder");
        }
    }
}

/// A free loopback address: bound, then released for a child process to bind.
fn free_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// A simulated node or the temporary folder could not be set up.
    #[error("demo setup failed: {0}")]
    Setup(#[from] std::io::Error),
    /// The built-in config was rejected (for example no usable listen address).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The router itself could not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The demo's HTTPS port is taken (another demo, most likely).
    #[error("{0}; `demo --listen 127.0.0.1:8444` serves on another port")]
    PortTaken(StartError),
    /// A prosody node could not start.
    #[error(transparent)]
    Prosody(#[from] prosody::ProsodyError),
}

/// The demo's nodes: simulated, or prosody-backed with real signalling.
enum Nodes {
    Simulated(Vec<SimNode>),
    Prosody(Vec<prosody::ProsodyNode>),
}

impl Nodes {
    async fn start(with_prosody: bool) -> Result<Nodes, DemoError> {
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        Ok(if with_prosody {
            let mut nodes = Vec::with_capacity(NODE_NAMES.len());
            for name in NODE_NAMES {
                nodes.push(prosody::ProsodyNode::start(name, loopback).await?);
            }
            Nodes::Prosody(nodes)
        } else {
            let mut nodes = Vec::with_capacity(NODE_NAMES.len());
            for name in NODE_NAMES {
                nodes.push(SimNode::start(name, loopback).await?);
            }
            Nodes::Simulated(nodes)
        })
    }

    /// Each node's room census URL, in order (none for simulated nodes).
    fn census_urls(&self) -> Vec<String> {
        match self {
            Nodes::Simulated(_) => Vec::new(),
            Nodes::Prosody(nodes) => (nodes.iter())
                .map(|node| format!("http://{}/room-census", node.signalling()))
                .collect(),
        }
    }

    /// What serves each node's HTTP (for a prosody node, its front), in order.
    fn fronts(&self) -> Vec<&SimNode> {
        match self {
            Nodes::Simulated(nodes) => nodes.iter().collect(),
            Nodes::Prosody(nodes) => nodes
                .iter()
                .filter_map(prosody::ProsodyNode::front)
                .collect(),
        }
    }
}

/// Where the demo's CPU readings come from.
enum Cpu {
    Prometheus(PrometheusServer),
    /// `--no-prometheus`.
    Off,
    /// Prometheus could not be started; why.
    Missing(PrometheusError),
}

impl Cpu {
    async fn start(wanted: bool, nodes: &[&SimNode]) -> Cpu {
        if !wanted {
            return Cpu::Off;
        }
        let targets: Vec<SocketAddr> = nodes.iter().map(|n| n.addr()).collect();
        match PrometheusServer::start(&targets, SCRAPE_EVERY).await {
            Ok(server) => {
                // So that the first rooms are already placed by CPU.
                if !server
                    .wait_for(CPU_QUERY, targets.len(), FIRST_READINGS_WITHIN)
                    .await
                {
                    tracing::warn!(
                        "prometheus has no CPU reading of every node yet; rooms are placed by \
                         hashing until it has"
                    );
                }
                Cpu::Prometheus(server)
            }
            Err(e) => Cpu::Missing(e),
        }
    }

    fn describe(&self) -> String {
        match self {
            Cpu::Prometheus(server) => {
                let loads: Vec<String> = (NODE_NAMES.iter().zip(NODE_BUSY))
                    .map(|(name, busy)| format!("{name} {:.0} %", busy * 100.0))
                    .collect();
                format!(
                    "CPU: Prometheus at {} scrapes the nodes every second (busy: {}).\n     \
                     A new room goes to the least busy node that is under its bounded share.",
                    server.url(),
                    loads.join(", ")
                )
            }
            Cpu::Off => "CPU: not read (--no-prometheus); new rooms are placed by rendezvous \
                         hashing within the bounded load."
                .to_owned(),
            Cpu::Missing(why) => format!(
                "CPU: not read: {why}.\n     New rooms are placed by rendezvous hashing within \
                 the bounded load."
            ),
        }
    }
}

/// Runs the demo until Ctrl-C; with `with_prosody` every node runs real XMPP signalling, with
/// `with_prometheus` a real Prometheus (when installed) feeds placement the nodes' CPU.
pub async fn run(
    listen: Vec<SocketAddr>,
    with_prosody: bool,
    with_prometheus: bool,
) -> Result<(), DemoError> {
    // Before anything that must be cleaned up: a signal during start-up is then answered once
    // the demo is up, by stopping it properly.
    let stop = stop_signal();
    remove_abandoned_folders();
    // Start-up takes seconds (prosody, Prometheus's first readings): say so before the wait.
    println!(
        "jitsi-router demo: starting {} nodes{}{} …",
        NODE_NAMES.len(),
        if with_prosody { " with prosody" } else { "" },
        if with_prometheus {
            " and Prometheus for their CPU (a few seconds)"
        } else {
            ""
        },
    );
    let nodes = Nodes::start(with_prosody).await?;
    let fronts = nodes.fronts();
    for (front, busy) in fronts.iter().zip(NODE_BUSY) {
        front.set_busy(busy);
    }
    let list: Vec<(String, String)> = (fronts.iter())
        .map(|n| (n.name().to_owned(), n.url()))
        .collect();
    let cpu = Cpu::start(with_prometheus, &fronts).await;
    let dir = temp_folder("jitsi-router-demo-")?;
    let (cert, key) = crate::tls::write_self_signed(dir.path())?;
    let mut specs: Vec<NodeSpec> = list
        .iter()
        .map(|(name, url)| NodeSpec::new(name, url).expect("a demo node's URL is valid"))
        .collect();
    // Real prosody nodes serve the room census: the router keeps their live rooms pinned.
    for (spec, census) in specs.iter_mut().zip(nodes.census_urls()) {
        spec.census_url = Some(census);
    }
    let mut config = Config::with_defaults(listen, cert.clone(), key, specs)?;
    if let Cpu::Prometheus(server) = &cpu {
        let section = crate::config::Prometheus::built_in(server.url(), CPU_QUERY, READ_EVERY);
        config.prometheus = Some(section);
    }
    let server = bind(config).await?;
    let port = server.https_addrs().first().map_or(8443, |a| a.port());
    print_welcome(&list, port, &cert, with_prosody);
    println!("{}\n", cpu.describe());
    if let Some(admin) = server.admin_addr() {
        println!("Fleet dashboard: http://{admin}/   (metrics: http://{admin}/metrics)");
        println!("Admin API: curl http://{admin}/api/nodes   curl http://{admin}/api/rooms\n");
    }
    println!("Rooms and their nodes (Ctrl-C to stop):");
    print_pin_events(&server);
    server.run(stop).await;
    drop(cpu);
    drop(nodes);
    drop(dir);
    Ok(())
}

/// The demo's router on the admin listener's usual port, so that the dashboard is where the
/// README says; on any free one when something else holds it (another demo may take it between
/// a check and the bind, so the bind itself is the check).
async fn bind(mut config: Config) -> Result<Server, DemoError> {
    let any_port = config.server.admin_listen;
    let https = config.server.listen.clone();
    config.server.admin_listen = ([127, 0, 0, 1], 9480).into();
    match Server::bind(config.clone()).await {
        Ok(server) => Ok(server),
        Err(_) => {
            config.server.admin_listen = any_port;
            Server::bind(config).await.map_err(|e| match e {
                StartError::Bind { addr, ref source }
                    if https.contains(&addr) && source.kind() == std::io::ErrorKind::AddrInUse =>
                {
                    DemoError::PortTaken(e)
                }
                e => DemoError::Start(e),
            })
        }
    }
}

/// Prints a line for each room pinned or moved, as it happens.
fn print_pin_events(server: &Server) {
    let mut events = server.router().subscribe();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            match event.from {
                Some(from) => println!(
                    "  room {:?} → {} (moved from {from})",
                    event.room, event.node
                ),
                None => println!("  room {:?} → {}", event.room, event.node),
            }
        }
    });
}

/// What stops the demo: Ctrl-C, SIGTERM, or SIGHUP. A closed terminal sends SIGHUP to the demo
/// and to its Prometheus and prosody, which take it as "reload your config" and would outlive a
/// demo that died of it; stopping on it stops them and removes the temporary folders. Listened
/// for from this call on (see [`crate::server_shutdown_signal`]).
fn stop_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let hangup = crate::unix_signal(tokio::signal::unix::SignalKind::hangup());
    #[cfg(not(unix))]
    let hangup = std::future::pending::<()>();
    let shutdown = crate::server_shutdown_signal();
    async move {
        tokio::select! {
            () = shutdown => {}
            () = hangup => {}
        }
    }
}

fn print_welcome(nodes: &[(String, String)], port: u16, cert: &std::path::Path, prosody: bool) {
    let base = format!("https://localhost:{port}");
    let kind = if prosody {
        "Jitsi-style nodes with real prosody signalling"
    } else {
        "simulated Jitsi nodes"
    };
    println!("jitsi-router demo: {} {kind} behind {base}", nodes.len());
    for (name, url) in nodes {
        println!("  node {name:<8} {url}");
    }
    println!(
        "Self-signed certificate for localhost: {} (browsers will warn; curl needs -k)",
        cert.display()
    );
    println!();
    println!("Try:");
    println!("  {base}/MyRoom                                    (in a browser: the room page and its signalling)");
    println!("  curl -k {base}/myroom -i                         (room page; X-Jitsi-Shard names the node)");
    println!("  curl -k '{base}/http-bind?room=MyRoom' -d '<body/>'   (BOSH of the same room: same node)");
    println!("  curl -k {base}/another-room -i                  (a new room may land elsewhere)");
    if prosody {
        println!();
        println!("Real signalling: open {base}/MyRoom in two browser tabs; both join the MUC and list each other.");
        println!(
            "Any XMPP client: BOSH {base}/http-bind?room=myroom or WebSocket wss://localhost:{port}/xmpp-websocket?room=myroom,"
        );
        println!(
            "  domain {}, anonymous login, then join myroom@{}.",
            prosody::DOMAIN,
            prosody::MUC
        );
    }
    println!();
}
