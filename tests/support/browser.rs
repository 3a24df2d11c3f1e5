//! Real headless Chromium (Debian package `chromium`), driven over the DevTools protocol on a
//! loopback port: navigate, evaluate JavaScript, wait for the page to reach a state.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn chromium_binary() -> PathBuf {
    for candidate in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!("the chromium binary is missing: run the README's test command, which installs it");
}

/// Flags that keep a cross-site iframe in its page's process, so that
/// [`Tab::frame_context`] can find it (without them it is a target of its own).
pub const SAME_PROCESS_FRAMES: [&str; 2] = [
    "--disable-site-isolation-trials",
    "--disable-features=IsolateOrigins,site-per-process",
];

/// A headless Chromium with its own profile folder; killed when dropped.
pub struct Browser {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium; `extra` flags are added (e.g. certificate trust for the test CA).
    pub async fn launch(extra: &[&str]) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(chromium_binary())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-quic",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        // With port 0 Chromium writes the port it took into the profile folder.
        let active = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Some(port) = std::fs::read_to_string(&active)
                .ok()
                .and_then(|text| text.lines().next()?.trim().parse().ok())
            {
                break port;
            }
            assert!(Instant::now() < deadline, "chromium did not start in 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        Browser {
            child,
            port,
            _profile: profile,
        }
    }

    /// Opens a new tab.
    pub async fn tab(&self) -> Tab {
        let target: Value = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .put(format!(
                "http://127.0.0.1:{}/json/new?about:blank",
                self.port
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let url = target["webSocketDebuggerUrl"].as_str().unwrap();
        let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let mut tab = Tab { socket, next_id: 0 };
        tab.call("Page.enable", json!({})).await;
        tab.call("Runtime.enable", json!({})).await;
        tab
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser tab.
pub struct Tab {
    socket: Socket,
    next_id: u64,
}

impl Tab {
    /// Sends a DevTools command and returns its result (events in between are skipped).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let command = json!({ "id": id, "method": method, "params": params });
        self.socket
            .send(Message::text(command.to_string()))
            .await
            .unwrap();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(30), self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method} in 30 s"))
                .expect("devtools connection closed")
                .unwrap();
            let Message::Text(text) = message else {
                continue;
            };
            let answer: Value = serde_json::from_str(&text).unwrap();
            if answer["id"].as_u64() == Some(id) {
                assert!(answer.get("error").is_none(), "{method} failed: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// Loads `url` and waits for the document to finish loading.
    pub async fn goto(&mut self, url: &str) {
        let result = self.call("Page.navigate", json!({ "url": url })).await;
        assert!(
            result.get("errorText").is_none(),
            "loading {url} failed: {result}"
        );
        self.wait_for(
            "document.readyState === 'complete'",
            Duration::from_secs(30),
        )
        .await;
    }

    /// Evaluates a JavaScript expression (promises awaited) and returns its value.
    pub async fn eval(&mut self, expression: &str) -> Value {
        self.eval_in(None, expression).await
    }

    /// Evaluates a JavaScript expression (promises awaited) in `context` (see
    /// [`frame_context`](Self::frame_context)), else in the page, and returns its value.
    pub async fn eval_in(&mut self, context: Option<u64>, expression: &str) -> Value {
        let mut params =
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true });
        if let Some(context) = context {
            params["contextId"] = context.into();
        }
        let result = self.call("Runtime.evaluate", params).await;
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression} threw: {result}"
        );
        result["result"]["value"].clone()
    }

    /// An execution context in the page's frame whose URL starts with `url`, for
    /// [`eval_in`](Self::eval_in): a cross-site iframe's, which the page's own scripts cannot
    /// reach. Needs a browser launched with [`SAME_PROCESS_FRAMES`].
    pub async fn frame_context(&mut self, url: &str) -> u64 {
        let tree = self.call("Page.getFrameTree", json!({})).await;
        let children = tree["frameTree"]["childFrames"].as_array().cloned();
        let frame = (children.unwrap_or_default().iter())
            .map(|child| &child["frame"])
            .find(|frame| frame["url"].as_str().is_some_and(|u| u.starts_with(url)))
            .map(|frame| frame["id"].clone())
            .unwrap_or_else(|| panic!("no frame at {url} in {tree}"));
        let world = json!({ "frameId": frame, "worldName": "test" });
        let created = self.call("Page.createIsolatedWorld", world).await;
        created["executionContextId"].as_u64().unwrap()
    }

    /// Waits until `expression` is true in the page.
    pub async fn wait_for(&mut self, expression: &str, limit: Duration) {
        self.wait_for_in(None, expression, limit).await;
    }

    /// Waits until `expression` is true in `context`, else in the page.
    pub async fn wait_for_in(&mut self, context: Option<u64>, expression: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if self.eval_in(context, expression).await == Value::Bool(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the page never satisfied: {expression}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
