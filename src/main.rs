//! The `jitsi-router` command: `serve`, `check`, `demo`, `simulate` and `bench`.

#![forbid(unsafe_code)]

/// jemalloc instead of the system allocator: a proxied request allocates and frees buffers,
/// headers and futures across tokio's worker threads, and memory that slow or departed clients
/// held must go back to the system. Built with `background_thread:true,dirty_decay_ms:1000,
/// muzzy_decay_ms:0` (`.cargo/config.toml`), a background thread returns freed pages a second
/// after they are freed, whether or not the thread that freed them allocates again.
///
/// DESIGN note. The router ran on mimalloc 2.x before 2026-12-05, which spent fewer cycles a
/// request than glibc's allocator. But mimalloc returns a thread's freed pages only when that
/// thread allocates again, and its options cannot be set without `unsafe`: after many clients
/// that never read a large answer disconnected, the router's own memory grew and stayed
/// (`tests/memory.rs`), where jemalloc's came back to its baseline within seconds, and glibc's
/// kept several times its baseline. Against HAProxy in the same runs, jemalloc and mimalloc
/// were alike in CPU per request, and an idle WebSocket tunnel holds less on jemalloc
/// (`benches/HISTORY.md`, "Hardening the public door").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use jitsi_router::config::{Config, LogFormat};
use jitsi_router::server::Server;

/// One HTTPS hostname in front of a fleet of Jitsi Meet nodes: every room pinned to one node.
#[derive(Parser)]
#[command(name = "jitsi-router", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the router with a config file.
    Serve {
        /// Path to the TOML config.
        #[arg(long, short, value_name = "PATH")]
        config: PathBuf,
    },
    /// Validate a config (and its certificate and key), print what was understood, and exit.
    Check {
        /// Path to the TOML config.
        #[arg(long, short, value_name = "PATH")]
        config: PathBuf,
        /// Also ask each node its health checks and census, Prometheus its CPU query and the
        /// shared pin store for a key, once, and say what each answered; exits 1 if any failed.
        #[arg(long)]
        probe: bool,
    },
    /// Compare placement policies on a synthetic workload (no network).
    Simulate {
        #[command(flatten)]
        params: jitsi_router::simulate::Params,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Measure joining conferences through the router (or any Jitsi deployment): participants
    /// load the room page and config.js, connect over XMPP, join, exchange messages and leave.
    /// Exits non-zero on any error or split room.
    Bench {
        #[command(flatten)]
        settings: jitsi_router::bench::Settings,
        /// Run the same against this node first, and print what the router adds per phase.
        #[arg(long, value_name = "NODE_URL")]
        direct: Option<String>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Try it with no setup: three simulated Jitsi nodes behind https://localhost:8443.
    Demo {
        /// Addresses to serve HTTPS on.
        #[arg(long, value_name = "ADDR", default_values = ["127.0.0.1:8443", "[::1]:8443"])]
        listen: Vec<SocketAddr>,
        /// Real XMPP signalling: each node runs prosody (Debian package `prosody`).
        #[arg(long)]
        prosody: bool,
        /// Do not start Prometheus (by default the demo starts one when it is installed, so that
        /// rooms are placed by the nodes' CPU).
        #[arg(long)]
        no_prometheus: bool,
    },
}

/// Logging at `default` level unless `RUST_LOG` says otherwise. The redis crate's own
/// warnings are left out: a cluster client warns at every failed reconnection, once a second
/// while Redis is down, where the router's warning (with the same error) comes at most every
/// ten seconds.
fn init_logging(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default},redis=error")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config, probe } => {
            init_logging("info", LogFormat::Text);
            check(&config, probe)
        }
        // `serve` logs in the format its config asks for, so it reads the config first.
        Command::Serve { config } => {
            Config::load(&config)
                .map_err(|e| e.to_string())
                .and_then(|config| {
                    init_logging("info", config.log.format);
                    runtime().and_then(|rt| rt.block_on(serve(config)))
                })
        }
        Command::Demo {
            listen,
            prosody,
            no_prometheus,
        } => {
            init_logging("info", LogFormat::Text);
            runtime().and_then(|rt| rt.block_on(demo(listen, prosody, !no_prometheus)))
        }
        Command::Bench {
            mut settings,
            direct,
            json,
        } => {
            init_logging("warn", LogFormat::Text);
            settings.progress = !json;
            return runtime()
                .and_then(|rt| rt.block_on(bench(settings, direct, json)))
                .unwrap_or_else(|message| {
                    eprintln!("jitsi-router: {message}");
                    ExitCode::from(2)
                });
        }
        Command::Simulate { params, json } => {
            // The simulator places thousands of rooms; their pin events are noise there.
            init_logging("warn", LogFormat::Text);
            simulate(params, json)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("jitsi-router: {message}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

async fn serve(config: Config) -> Result<(), String> {
    if config.nodes.is_empty() {
        tracing::warn!("no [[nodes]] configured: every room will get 503 until nodes are added");
    }
    let stop = jitsi_router::server_shutdown_signal();
    let server = Server::bind(config).await.map_err(|e| e.to_string())?;
    server.run(stop).await;
    Ok(())
}

async fn demo(listen: Vec<SocketAddr>, prosody: bool, prometheus: bool) -> Result<(), String> {
    // The ::1 default is a convenience: skip it quietly where IPv6 loopback is missing.
    let listen: Vec<SocketAddr> = listen
        .into_iter()
        .filter(|a| a.is_ipv4() || std::net::TcpListener::bind((a.ip(), 0)).is_ok())
        .collect();
    jitsi_router::demo::run(listen, prosody, prometheus)
        .await
        .map_err(|e| e.to_string())
}

/// Runs `bench`: exit status 0 only with no error and no split room, 1 otherwise, 2 when it
/// could not run at all.
async fn bench(
    settings: jitsi_router::bench::Settings,
    direct: Option<String>,
    json: bool,
) -> Result<ExitCode, String> {
    if settings.rooms == 0 || settings.participants == 0 {
        return Err("bench needs --rooms and --participants of at least 1".into());
    }
    let direct = match direct {
        Some(node) => {
            if !json {
                eprintln!("directly against {node}:");
            }
            Some(jitsi_router::bench::run(&settings, &[node]).await?)
        }
        None => None,
    };
    if !json && direct.is_some() {
        eprintln!("through {}:", settings.targets.join(", "));
    }
    let report = jitsi_router::bench::run(&settings, &settings.targets).await?;
    if json {
        println!("{}", report.json(direct.as_ref()));
    } else {
        if let Some(direct) = &direct {
            println!("directly against the node:\n{}", direct.table(None));
            println!("through the router (\"added\": router minus direct):");
        }
        print!("{}", report.table(direct.as_ref()));
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn simulate(params: jitsi_router::simulate::Params, json: bool) -> Result<(), String> {
    if params.nodes < 2 || params.rooms == 0 || params.windows == 0 {
        return Err(format!(
            "simulate needs --nodes of at least 2 and --rooms and --windows of at least 1 (got {}, {}, {})",
            params.nodes, params.rooms, params.windows
        ));
    }
    if !(1..=1000).contains(&params.capacity_spread) {
        return Err(format!(
            "simulate needs --capacity-spread between 1 and 1000 (got {})",
            params.capacity_spread
        ));
    }
    let outcomes = jitsi_router::simulate::run(&params);
    if json {
        let text = serde_json::to_string_pretty(&outcomes).map_err(|e| e.to_string())?;
        println!("{text}");
    } else {
        print!("{}", jitsi_router::simulate::table(&params, &outcomes));
    }
    Ok(())
}

fn check(path: &Path, probe: bool) -> Result<(), String> {
    let config = jitsi_router::check::load(path)?;
    print!("{}", jitsi_router::check::describe(&config, path));
    if probe {
        let probed = runtime()?.block_on(jitsi_router::check::probe(&config))?;
        print!("{}", probed.text);
        if probed.failed > 0 {
            return Err(format!("{} of the probes failed", probed.failed));
        }
    }
    Ok(())
}
