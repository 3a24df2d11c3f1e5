//! A real Prometheus server (Debian package `prometheus`) scraping the demo's nodes, so that the
//! demo places rooms by CPU as a fleet does: its own data folder and free loopback port, stopped
//! when dropped. Used by `jitsi-router demo` when Prometheus is installed, and by the tests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// How long Prometheus may take to answer `/-/ready`.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// Where Prometheus is installed, if it is.
pub fn binary() -> Option<PathBuf> {
    super::installed("prometheus")
}

/// Why Prometheus could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrometheusError {
    /// Prometheus is not installed.
    #[error("prometheus is not installed (Debian: apt-get install prometheus)")]
    Missing,
    /// Files, the port or the process could not be set up.
    #[error("prometheus setup failed: {0}")]
    Io(#[from] std::io::Error),
    /// Prometheus exited or did not answer `/-/ready` in time; its log says why.
    #[error("prometheus did not become ready: {log}")]
    NotReady {
        /// The end of Prometheus's log.
        log: String,
    },
}

/// A Prometheus process scraping a fixed list of targets.
pub struct PrometheusServer {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
    /// For the readiness check and queries.
    client: reqwest::Client,
}

impl PrometheusServer {
    /// Starts Prometheus scraping `targets` (their `/metrics`) every `scrape`; returns once it
    /// answers `/-/ready`.
    pub async fn start(
        targets: &[SocketAddr],
        scrape: Duration,
    ) -> Result<PrometheusServer, PrometheusError> {
        PrometheusServer::start_on(targets, scrape, None, || Ok(super::free_port()?.port())).await
    }

    /// [`start`](Self::start), evaluating the alerting and recording rules of `rules` (a
    /// Prometheus rule file) every `scrape` too.
    pub async fn start_with_rules(
        targets: &[SocketAddr],
        scrape: Duration,
        rules: &std::path::Path,
    ) -> Result<PrometheusServer, PrometheusError> {
        let ports = || Ok(super::free_port()?.port());
        PrometheusServer::start_on(targets, scrape, Some(rules), ports).await
    }

    /// [`start`](Self::start) on ports from `ports`. A port is free when it is picked, and
    /// someone else may bind it before Prometheus does (Prometheus then exits: "address already
    /// in use"); it is given up for the next port, three ports at most, as the demo's prosody
    /// nodes do.
    async fn start_on(
        targets: &[SocketAddr],
        scrape: Duration,
        rules: Option<&std::path::Path>,
        mut ports: impl FnMut() -> std::io::Result<u16>,
    ) -> Result<PrometheusServer, PrometheusError> {
        let binary = binary().ok_or(PrometheusError::Missing)?;
        let dir = super::temp_folder("jitsi-router-prometheus-")?;
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let every = humantime::format_duration(scrape);
        let config = dir.path().join("prometheus.yml");
        let rule_files = rules.map_or(String::new(), |r| format!("rule_files: [{:?}]\n", r));
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: {every}\n  evaluation_interval: {every}\n{rule_files}\
                 scrape_configs:\n  - job_name: nodes\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )?;
        let spawn = |dir: &std::path::Path, port: u16| {
            let log = std::fs::File::create(dir.join("prometheus.log"))?;
            super::dies_with_us(&binary)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
        };
        let port = ports()?;
        let mut server = PrometheusServer {
            child: spawn(dir.path(), port)?,
            url: format!("http://127.0.0.1:{port}"),
            dir,
            client: reqwest::Client::new(),
        };
        for attempt in 1.. {
            match server.ready().await {
                Ok(()) => break,
                Err(PrometheusError::NotReady { log })
                    if attempt < 3 && log.contains("address already in use") =>
                {
                    let port = ports()?;
                    server.child = spawn(server.dir.path(), port)?;
                    server.url = format!("http://127.0.0.1:{port}");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(server)
    }

    async fn ready(&mut self) -> Result<(), PrometheusError> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let answer = (self.client)
                .get(format!("{}/-/ready", self.url))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if answer.is_ok_and(|a| a.status().is_success()) {
                return Ok(());
            }
            if Instant::now() > deadline || self.child.try_wait()?.is_some() {
                self.stop();
                return Err(PrometheusError::NotReady {
                    log: self.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs an instant query; the values by their `instance` label (rows without one, or with
    /// a value that is not a number, are left out).
    pub async fn query(&self, promql: &str) -> Result<HashMap<String, f64>, reqwest::Error> {
        let answer: serde_json::Value = (self.client)
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", promql)])
            .timeout(Duration::from_secs(5))
            .send()
            .await?
            .json()
            .await?;
        let rows = answer["data"]["result"].as_array().into_iter().flatten();
        Ok(rows
            .filter_map(|row| {
                let instance = row["metric"]["instance"].as_str()?.to_owned();
                let value = row["value"][1].as_str()?.parse().ok()?;
                Some((instance, value))
            })
            .collect())
    }

    /// Waits up to `limit` until `promql` has a value for `count` instances; whether it did.
    pub async fn wait_for(&self, promql: &str, count: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self
                .query(promql)
                .await
                .is_ok_and(|values| values.len() >= count)
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        false
    }

    /// The last lines of Prometheus's log.
    fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// Its base URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops the process (also done on drop).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_port_taken_before_prometheus_binds_it_is_given_up_for_another() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let mut first = Some(taken_port);
        let server =
            PrometheusServer::start_on(&[], Duration::from_secs(1), None, || match first.take() {
                Some(port) => Ok(port),
                None => Ok(crate::demo::free_port()?.port()),
            })
            .await
            .expect("Prometheus (Debian package `prometheus`, which scripts/test installs) starts");
        assert!(
            !server.url().ends_with(&format!(":{taken_port}")),
            "{}",
            server.url()
        );
        assert!(
            server.query("up").await.is_ok(),
            "it answers on its new port"
        );
        drop(taken);
    }
}
