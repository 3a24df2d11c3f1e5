//! A node front's signalling relay: `/http-bind` and `/xmpp-websocket` passed to a real XMPP
//! server's HTTP port (prosody's `mod_bosh` and `mod_websocket`), like a Jitsi web container's
//! nginx does; plus the room page that joins its room over XMPP from the browser.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A front's answer: its own small body, or the XMPP server's streamed one.
pub type Body = Either<Full<Bytes>, Incoming>;

/// Relays signalling requests to one XMPP server.
pub struct Relay {
    backend: SocketAddr,
    host: HeaderValue,
    client: Client<HttpConnector, Incoming>,
}

impl Relay {
    /// A relay to the XMPP server's plain-HTTP listener at `backend`.
    pub fn new(backend: SocketAddr) -> Relay {
        Relay {
            backend,
            host: HeaderValue::from_str(&backend.to_string())
                .unwrap_or(HeaderValue::from_static("localhost")),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Passes one request on (a WebSocket upgrade becomes a spliced tunnel).
    pub async fn forward(&self, mut req: Request<Incoming>) -> Response<Body> {
        let websocket = req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        let downstream = websocket.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        // As jitsi-meet's nginx rewrites `/<tenant>/http-bind` to prosody's `/http-bind`.
        let path = parts.uri.path();
        let endpoint = &path[path.rfind('/').unwrap_or(0)..];
        let query = parts.uri.query().map_or(String::new(), |q| format!("?{q}"));
        let Ok(uri) = format!("http://{}{endpoint}{query}", self.backend).parse() else {
            return plain(StatusCode::BAD_REQUEST, "request target cannot be relayed");
        };
        parts.uri = uri;
        parts.version = http::Version::HTTP_11;
        parts.headers.insert(header::HOST, self.host.clone());
        let mut response = match self.client.request(Request::from_parts(parts, body)).await {
            Ok(response) => response,
            Err(_) => return plain(StatusCode::BAD_GATEWAY, "the XMPP server is unreachable"),
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(downstream) = downstream {
                let upstream = hyper::upgrade::on(&mut response);
                tokio::spawn(async move {
                    if let (Ok(down), Ok(up)) = (downstream.await, upstream.await) {
                        let _ = tokio::io::copy_bidirectional(
                            &mut TokioIo::new(down),
                            &mut TokioIo::new(up),
                        )
                        .await;
                    }
                });
            }
        }
        response.map(Either::Right)
    }
}

fn plain(status: StatusCode, reason: &'static str) -> Response<Body> {
    let mut response = Response::new(Either::Left(Full::new(Bytes::from_static(
        reason.as_bytes(),
    ))));
    *response.status_mut() = status;
    response
}

/// The room page of a front with real signalling; `room` is already HTML-escaped.
pub fn room_page(node: &str, room: &str) -> String {
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>{room} · {node}</title>
<style>body{{font:16px system-ui,sans-serif;margin:2em;max-width:44em}}code{{background:#eee;padding:0 .3em}}</style>
</head><body>
<h1>Room <code>{room}</code> on node <code>{node}</code></h1>
<p>This page joined the room over real XMPP (prosody, WebSocket through jitsi-router). Open the same
room in another tab: both tabs list each other.</p>
<p>Status: <span id="status">connecting</span> as <code id="me"></code></p>
<h2>In the room</h2>
<ul id="occupants"></ul>
<script src="/libs/xmpp-room.js"></script>
</body></html>
"#
    )
}

/// Joins the page's room as an anonymous MUC occupant over XMPP-over-WebSocket (RFC 7395) and
/// keeps `#occupants` (and `window.xmppRoom`) up to date.
pub const ROOM_SCRIPT: &str = r#""use strict";
(function () {
  const DOMAIN = "meet.jitsi", MUC = "muc.meet.jitsi";
  // As jitsi-meet's getBackendSafeRoomName: a segment that does not decode stays as it is.
  const decode = (s) => { try { return decodeURIComponent(s); } catch (e) { return s; } };
  const path = location.pathname.split("/").filter(Boolean).map((s) => decode(s).toLowerCase());
  const room = path.pop() || "lobby";
  // A tenant's page (`/<tenant>/<room>`) signals under its tenant, as jitsi-meet's config.js
  // does, and its MUC room is `[tenant]room`, as Jitsi names it.
  const tenant = path.length ? path[0] : "";
  const base = tenant ? "/" + encodeURIComponent(tenant) : "";
  const mucRoom = (tenant ? "[" + tenant + "]" : "") + room;
  const nick = "web-" + Math.random().toString(36).slice(2, 8);
  const state = window.xmppRoom = { room, nick, jid: null, joined: false, occupants: [] };
  const seen = new Set();
  const status = (text) => { document.getElementById("status").textContent = text; };
  const render = () => {
    state.occupants = [...seen].sort();
    const list = document.getElementById("occupants");
    list.replaceChildren(...state.occupants.map((name) => {
      const li = document.createElement("li");
      li.textContent = name === nick ? name + " (you)" : name;
      li.dataset.nick = name;
      return li;
    }));
  };
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const ws = new WebSocket(scheme + location.host + base + "/xmpp-websocket?room=" + encodeURIComponent(room), "xmpp");
  const open = () => ws.send('<open xmlns="urn:ietf:params:xml:ns:xmpp-framing" to="' + DOMAIN + '" version="1.0"/>');
  ws.onopen = open;
  ws.onclose = () => status("disconnected");
  ws.onerror = () => status("connection failed");
  ws.onmessage = (message) => {
    const stanza = new DOMParser().parseFromString(message.data, "text/xml").documentElement;
    switch (stanza.localName) {
      case "features":
        if (stanza.getElementsByTagName("mechanisms").length) {
          ws.send('<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism="ANONYMOUS"/>');
        } else if (stanza.getElementsByTagName("bind").length) {
          ws.send('<iq xmlns="jabber:client" type="set" id="bind"><bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"/></iq>');
        }
        break;
      case "success":
        open();
        break;
      case "failure":
        status("authentication refused");
        break;
      case "iq":
        if (stanza.getAttribute("id") === "bind" && stanza.getAttribute("type") === "result") {
          state.jid = stanza.getElementsByTagName("jid")[0].textContent;
          document.getElementById("me").textContent = nick;
          ws.send('<presence xmlns="jabber:client" to="' + mucRoom + "@" + MUC + "/" + nick +
                  '"><x xmlns="http://jabber.org/protocol/muc"/></presence>');
        }
        break;
      case "presence": {
        const from = stanza.getAttribute("from") || "";
        const who = from.slice(from.indexOf("/") + 1);
        if (!from.startsWith(mucRoom + "@" + MUC + "/")) break;
        if (stanza.getAttribute("type") === "error") { status("join refused"); break; }
        if (stanza.getAttribute("type") === "unavailable") seen.delete(who); else seen.add(who);
        if (who === nick && stanza.getAttribute("type") !== "unavailable") {
          state.joined = true;
          status("joined");
        }
        render();
        break;
      }
    }
  };
})();
"#;
