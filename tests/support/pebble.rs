//! A real ACME server for the tests: Let's Encrypt's `pebble` (Debian package `pebble`), with
//! `pebble-challtestsrv` as its DNS server answering 127.0.0.1 for every name, on loopback
//! ports, validating challenges against the router's own listeners.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::{closed_port, eventually, serve_http, Certs};

/// A running pebble and its DNS server. Pebble keeps everything in memory: a restart forgets
/// accounts and orders and makes a new root.
pub struct Pebble {
    pebble: Option<Child>,
    dns: Child,
    dns_port: u16,
    config: PathBuf,
    /// Pebble's own TLS: its certificate's CA is what the router's `directory_ca` names.
    pub tls: Certs,
    pub listen: SocketAddr,
    management: SocketAddr,
}

impl Pebble {
    /// Starts pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port` of
    /// 127.0.0.1, issuing certificates valid for `validity` (pebble's default: five years).
    pub async fn start(http_port: u16, tls_port: u16, validity: Option<Duration>) -> Pebble {
        let tls = Certs::new();
        let listen: SocketAddr = format!("127.0.0.1:{}", closed_port()).parse().unwrap();
        let management: SocketAddr = format!("127.0.0.1:{}", closed_port()).parse().unwrap();
        let mut settings = serde_json::json!({
            "listenAddress": listen.to_string(),
            "managementListenAddress": management.to_string(),
            "certificate": tls.cert,
            "privateKey": tls.key,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        });
        if let Some(validity) = validity {
            settings["certificateValidityPeriod"] = validity.as_secs().into();
        }
        let config = tls.dir.path().join("pebble.json");
        let text = serde_json::json!({ "pebble": settings }).to_string();
        std::fs::write(&config, text).unwrap();
        let dns_port = closed_port();
        let dns = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{}", closed_port())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("pebble-challtestsrv: {e}: run the README's test command, which installs it")
            });
        let mut pebble = Pebble {
            pebble: None,
            dns,
            dns_port,
            config,
            tls,
            listen,
            management,
        };
        pebble.run().await;
        pebble
    }

    async fn run(&mut self) {
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&self.config)
            .args(["-dnsserver", &format!("127.0.0.1:{}", self.dns_port)])
            // Validate at once, and never reject a nonce on purpose.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("pebble: {e}: run the README's test command, which installs it")
            });
        self.pebble = Some(child);
        let client = self.client();
        let url = self.directory();
        eventually(Duration::from_secs(20), "pebble to answer", || async {
            client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
    }

    /// The directory URL.
    pub fn directory(&self) -> String {
        format!("https://{}/dir", self.listen)
    }

    pub fn client(&self) -> reqwest::Client {
        let ca = std::fs::read(&self.tls.ca).unwrap();
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .no_proxy()
            .build()
            .unwrap()
    }

    /// The root its certificates chain to now (PEM).
    pub async fn root(&self) -> String {
        let url = format!("https://{}/roots/0", self.management);
        let answer = self.client().get(url).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        answer.text().await.unwrap()
    }

    /// Stops pebble (its DNS server stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.pebble.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts pebble again: a new root, no accounts.
    pub async fn restart(&mut self) {
        self.stop();
        self.run().await;
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        let _ = self.dns.kill();
        let _ = self.dns.wait();
    }
}

/// A suggested renewal window: start and end.
pub type Window = (SystemTime, SystemTime);

/// ACME Renewal Information (ARI, RFC 9773) in front of pebble, which Debian's pebble 2.4 does
/// not offer: a directory that is pebble's plus a `renewalInfo` URL, whose answers (a window
/// per certificate identifier, `Retry-After: 1`) the test sets. Orders still go to pebble,
/// which ignores their `replaces`.
pub struct Ari {
    /// The directory URL to give the router.
    pub directory: String,
    windows: Arc<Mutex<HashMap<String, Window>>>,
    asked: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Ari {
    /// Answers `default` for every certificate the test has not set a window for.
    pub async fn start(pebble: &Pebble, default: Window) -> Ari {
        let client = pebble.client();
        let directory: serde_json::Value = (client.get(pebble.directory()).send().await)
            .unwrap()
            .json()
            .await
            .unwrap();
        let windows = Arc::new(Mutex::new(HashMap::new()));
        let asked = Arc::new(Mutex::new(Vec::new()));
        let base = Arc::new(Mutex::new(String::new()));
        let (shared_windows, shared_asked, shared_base) =
            (windows.clone(), asked.clone(), base.clone());
        let (url, task) = serve_http(move |req| {
            let path = req.uri().path().to_owned();
            let answer = match path.strip_prefix("/renewal-info/") {
                Some(id) => {
                    shared_asked.lock().unwrap().push(id.to_owned());
                    let windows = shared_windows.lock().unwrap();
                    let (start, end) = windows.get(id).copied().unwrap_or(default);
                    let at = |t| humantime::format_rfc3339_seconds(t).to_string();
                    let body = serde_json::json!({
                        "suggestedWindow": { "start": at(start), "end": at(end) }
                    });
                    hyper::Response::builder()
                        .header("retry-after", "1")
                        .header("content-type", "application/json")
                        .body(body.to_string())
                        .unwrap()
                }
                None => {
                    let mut directory = directory.clone();
                    directory["renewalInfo"] =
                        format!("{}/renewal-info", shared_base.lock().unwrap()).into();
                    hyper::Response::builder()
                        .header("content-type", "application/json")
                        .body(directory.to_string())
                        .unwrap()
                }
            };
            async move { answer }
        })
        .await;
        *base.lock().unwrap() = url.clone();
        Ari {
            directory: format!("{url}/dir"),
            windows,
            asked,
            task,
        }
    }

    /// Suggests `window` for the certificate `id` from now on.
    pub fn set(&self, id: &str, window: Window) {
        self.windows.lock().unwrap().insert(id.to_owned(), window);
    }

    /// The certificate identifiers asked about so far, in order.
    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

impl Drop for Ari {
    fn drop(&mut self) {
        self.task.abort();
    }
}
