//! `jitsi-router demo`: a zero-setup fleet. Three simulated Jitsi nodes start in-process, a
//! self-signed certificate for `localhost` is written to a temporary folder, and the router serves
//! them on `https://localhost:8443`, printing which node each new room lands on.

pub mod prosody;
mod relay;
pub mod sim_node;

use std::net::SocketAddr;

use crate::config::{Config, NodeSpec};
use crate::server::{Server, StartError};
pub use sim_node::SimNode;

/// Names of the demo's nodes.
pub const NODE_NAMES: [&str; 3] = ["jitsi-a", "jitsi-b", "jitsi-c"];

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

    /// Name and base URL of each node.
    fn list(&self) -> Vec<(String, String)> {
        match self {
            Nodes::Simulated(nodes) => nodes
                .iter()
                .map(|n| (n.name().to_owned(), n.url()))
                .collect(),
            Nodes::Prosody(nodes) => nodes
                .iter()
                .map(|n| (n.name().to_owned(), n.url()))
                .collect(),
        }
    }
}

/// Runs the demo until Ctrl-C; with `with_prosody` every node runs real XMPP signalling.
pub async fn run(listen: Vec<SocketAddr>, with_prosody: bool) -> Result<(), DemoError> {
    let nodes = Nodes::start(with_prosody).await?;
    let list = nodes.list();
    let dir = tempfile::Builder::new()
        .prefix("jitsi-router-demo-")
        .tempdir()?;
    let (cert, key) = crate::tls::write_self_signed(dir.path())?;
    let specs = list
        .iter()
        .map(|(name, url)| NodeSpec::new(name, url).expect("a demo node's URL is valid"))
        .collect();
    let mut config = Config::with_defaults(listen, cert.clone(), key, specs)?;
    // The admin listener's usual port when it is free, so the dashboard is where the README says.
    let usual: SocketAddr = ([127, 0, 0, 1], 9480).into();
    if std::net::TcpListener::bind(usual).is_ok() {
        config.server.admin_listen = usual;
    }
    let server = Server::bind(config).await?;
    let port = server.https_addrs().first().map_or(8443, |a| a.port());
    print_welcome(&list, port, &cert, with_prosody);
    if let Some(admin) = server.admin_addr() {
        println!("Fleet dashboard: http://{admin}/   (metrics: http://{admin}/metrics)");
        println!("Admin API: curl http://{admin}/api/nodes   curl http://{admin}/api/rooms\n");
    }
    println!("Rooms and their nodes (Ctrl-C to stop):");
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
    server.run(crate::server_shutdown_signal()).await;
    drop(nodes);
    drop(dir);
    Ok(())
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
