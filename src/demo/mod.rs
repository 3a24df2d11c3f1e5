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
}

/// Runs the demo until Ctrl-C.
pub async fn run(listen: Vec<SocketAddr>) -> Result<(), DemoError> {
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut nodes = Vec::with_capacity(NODE_NAMES.len());
    for name in NODE_NAMES {
        nodes.push(SimNode::start(name, loopback).await?);
    }
    let dir = tempfile::Builder::new()
        .prefix("jitsi-router-demo-")
        .tempdir()?;
    let (cert, key) = crate::tls::write_self_signed(dir.path())?;
    let specs = nodes
        .iter()
        .map(|n| NodeSpec::new(n.name(), &n.url()).expect("a sim node's URL is valid"))
        .collect();
    let mut config = Config::with_defaults(listen, cert.clone(), key, specs)?;
    // The admin listener's usual port when it is free, so the dashboard is where the README says.
    let usual: SocketAddr = ([127, 0, 0, 1], 9480).into();
    if std::net::TcpListener::bind(usual).is_ok() {
        config.server.admin_listen = usual;
    }
    let server = Server::bind(config).await?;
    let port = server.https_addrs().first().map_or(8443, |a| a.port());
    print_welcome(&nodes, port, &cert);
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
    drop(dir);
    Ok(())
}

fn print_welcome(nodes: &[SimNode], port: u16, cert: &std::path::Path) {
    let base = format!("https://localhost:{port}");
    println!(
        "jitsi-router demo: {} simulated Jitsi nodes behind {base}",
        nodes.len()
    );
    for node in nodes {
        println!("  node {:<8} {}", node.name(), node.url());
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
    println!();
}
