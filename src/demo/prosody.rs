//! Jitsi-style signalling nodes with real prosody (Debian package `prosody`): each node is a
//! prosody process with its own data folder and loopback HTTP port — anonymous login on
//! `meet.jitsi`, a MUC component `muc.meet.jitsi`, BOSH at `/http-bind`, WebSocket at
//! `/xmpp-websocket` — behind a [`SimNode`] front that serves the room page, `config.js`,
//! `/about/health` and CPU `/metrics` like a Jitsi web container and relays the signalling paths.
//! Used by `jitsi-router demo --prosody` and the end-to-end tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::SimNode;

/// The XMPP domain every node serves (as in docker-jitsi-meet).
pub const DOMAIN: &str = "meet.jitsi";
/// The MUC component: a Jitsi room `r` is the MUC `r@muc.meet.jitsi`.
pub const MUC: &str = "muc.meet.jitsi";

/// The project's prosody module serving the room census at `/room-census` (the shape of Jitsi's
/// `mod_muc_census`), loaded on every node.
const ROOM_CENSUS: &str = include_str!("prosody/mod_room_census.lua");

/// Where prosody is installed, if it is.
pub fn binary() -> Option<PathBuf> {
    super::installed("prosody")
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProsodyError {
    /// prosody is not installed.
    #[error("prosody is not installed (Debian: apt-get install prosody)")]
    Missing,
    /// Files or sockets could not be set up.
    #[error("prosody node setup failed: {0}")]
    Io(#[from] std::io::Error),
    /// prosody did not serve BOSH in time; its log says why.
    #[error("prosody for {node} did not become ready: {log}")]
    NotReady {
        /// The node.
        node: String,
        /// The end of prosody's log.
        log: String,
    },
}

/// One signalling node: prosody plus its front; both stop when dropped.
pub struct ProsodyNode {
    name: String,
    prosody: Option<Child>,
    front: Option<SimNode>,
    http: SocketAddr,
    dir: tempfile::TempDir,
}

impl ProsodyNode {
    /// Starts prosody on a free loopback port and its front on `front_bind`; returns once prosody
    /// answers BOSH.
    pub async fn start(name: &str, front_bind: SocketAddr) -> Result<ProsodyNode, ProsodyError> {
        binary().ok_or(ProsodyError::Missing)?;
        let dir = super::temp_folder(&format!("jitsi-router-{name}-"))?;
        let mut node = ProsodyNode {
            name: name.to_owned(),
            prosody: None,
            front: None,
            http: super::free_port()?,
            dir,
        };
        // A free port can be taken by someone else before prosody binds it; try a few.
        let mut attempts = 0;
        loop {
            match node.run_prosody().await {
                Ok(()) => break,
                Err(e) if attempts == 2 => return Err(e),
                Err(_) => {
                    node.stop_prosody();
                    node.http = super::free_port()?;
                    attempts += 1;
                }
            }
        }
        node.front = Some(SimNode::start_with_signalling(name, front_bind, node.http).await?);
        Ok(node)
    }

    /// Starts prosody with this node's config on its port; returns once it answers BOSH.
    async fn run_prosody(&mut self) -> Result<(), ProsodyError> {
        let binary = binary().ok_or(ProsodyError::Missing)?;
        let config_file = self.dir.path().join("prosody.cfg.lua");
        std::fs::write(&config_file, config(self.dir.path(), self.http))?;
        std::fs::write(self.dir.path().join("mod_room_census.lua"), ROOM_CENSUS)?;
        self.prosody = Some(
            super::dies_with_us(&binary)
                .arg("--config")
                .arg(&config_file)
                .arg("-F")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        self.wait_ready().await
    }

    /// Kills prosody alone, as a crashed signalling server: the front keeps answering, and
    /// its signalling paths fail.
    pub fn stop_prosody(&mut self) {
        if let Some(mut child) = self.prosody.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts prosody again on the same port (after [`stop_prosody`](Self::stop_prosody)).
    pub async fn restart_prosody(&mut self) -> Result<(), ProsodyError> {
        self.stop_prosody();
        self.run_prosody().await
    }

    /// Where prosody serves HTTP (BOSH at `/http-bind`, WebSocket at `/xmpp-websocket`, the
    /// room census at `/room-census`).
    pub fn signalling(&self) -> SocketAddr {
        self.http
    }

    async fn wait_ready(&mut self) -> Result<(), ProsodyError> {
        let url = format!("http://{}/http-bind", self.http);
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(());
            }
            let exited = self
                .prosody
                .as_mut()
                .is_none_or(|child| matches!(child.try_wait(), Ok(Some(_))));
            if exited || Instant::now() > deadline {
                return Err(ProsodyError::NotReady {
                    node: self.name.clone(),
                    log: self.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The end of prosody's log, for error messages.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("prosody.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The front's base URL (the node's upstream for the router).
    pub fn url(&self) -> String {
        self.front.as_ref().map_or_else(String::new, SimNode::url)
    }

    /// The front: what serves the room page, health and CPU `/metrics`; `None` once stopped.
    pub fn front(&self) -> Option<&SimNode> {
        self.front.as_ref()
    }

    /// Stops prosody and the front, as a crashed or powered-off node: connections drop, new ones
    /// are refused.
    pub fn stop(&mut self) {
        self.stop_prosody();
        self.front = None;
    }
}

impl Drop for ProsodyNode {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lua_string(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// A prosody config for one node: only loopback HTTP (no c2s, s2s or component ports), anonymous
/// login, an unlocked MUC, everything kept in memory and logged to the node's folder.
fn config(dir: &Path, http: SocketAddr) -> String {
    format!(
        r#"-- written by jitsi-router for one signalling node
pidfile = {pid}
data_path = {data}
certificates = {dir}
run_as_root = true
log = {{ info = {log} }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ }}
c2s_direct_tls_ports = {{ }}
legacy_ssl_ports = {{ }}
s2s_ports = {{ }}
component_ports = {{ }}
http_ports = {{ {port} }}
http_interfaces = {{ "127.0.0.1" }}
https_ports = {{ }}
http_default_host = "{DOMAIN}"
modules_enabled = {{ "saslauth", "disco", "ping", "bosh", "websocket" }}
modules_disabled = {{ "s2s", "tls", "offline", "c2s_direct_tls" }}
consider_websocket_secure = true
consider_bosh_secure = true
c2s_require_encryption = false
authentication = "anonymous"
storage = "memory"
bosh_max_inactivity = 60

plugin_paths = {{ {dir} }}

VirtualHost "{DOMAIN}"
    authentication = "anonymous"
    modules_enabled = {{ "room_census" }}

Component "{MUC}" "muc"
    muc_room_locking = false
    restrict_room_creation = false
"#,
        pid = lua_string(&dir.join("prosody.pid")),
        data = lua_string(&dir.join("data")),
        dir = lua_string(dir),
        log = lua_string(&dir.join("prosody.log")),
        port = http.port(),
    )
}
