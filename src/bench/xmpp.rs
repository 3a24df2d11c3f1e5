//! A participant's signalling as a Jitsi web client does it: anonymous SASL login, resource
//! bind, a MUC join of `<room>@<muc-domain>`, groupchat messages, and leaving, over WebSocket
//! (RFC 7395, `/xmpp-websocket?room=`) or BOSH (XEP-0206, `/http-bind?room=`). A `307` from a
//! router in redirect mode is followed to the node, as a browser does. Enough XML handling for
//! the stanzas these flows exchange; each participant keeps the occupants it has seen.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::error_chain::error_chain;
use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How a participant talks to its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// XMPP over WebSocket.
    #[value(name = "websocket")]
    WebSocket,
    /// XMPP over BOSH long-polls.
    Bosh,
}

/// Where and how to connect.
#[derive(Clone)]
pub struct Endpoint {
    /// `https://host[:port]` (or `http://`) without a trailing slash.
    pub base: String,
    /// The TLS trust for `wss://` (the same as `http`'s).
    pub tls: Arc<rustls::ClientConfig>,
    /// For the page, `config.js` and BOSH; follows no redirects (BOSH follows its `307` once).
    pub http: reqwest::Client,
    /// The XMPP domain (`meet.jitsi` in docker-jitsi-meet).
    pub domain: String,
    /// The MUC domain (`muc.meet.jitsi`).
    pub muc: String,
    /// The longest wait for one step's answer.
    pub step: Duration,
}

enum Link {
    WebSocket(Box<Ws>),
    Bosh { url: String, sid: String, rid: u64 },
}

/// One person in one room.
pub struct Participant {
    /// The room (lower-case).
    pub room: String,
    /// The nick it joined with.
    pub nick: String,
    /// The node that answered the signalling connection (`X-Jitsi-Shard`; empty if none said).
    pub node: String,
    occupants: BTreeSet<String>,
    /// Everyone it has seen in the room at some point.
    met: BTreeSet<String>,
    link: Link,
    endpoint: Endpoint,
    /// Received but not yet read: BOSH answers to what is sent may carry stanzas.
    pending: String,
    /// Why the MUC refused this participant's presence (its error condition), if it did.
    refused: Option<String>,
}

impl Participant {
    /// Opens the signalling connection for `room` and logs in; the room is not joined yet.
    pub async fn connect(
        endpoint: &Endpoint,
        transport: Transport,
        room: &str,
        nick: &str,
    ) -> Result<Participant, String> {
        let room = room.to_lowercase();
        let (link, node, pending) = match transport {
            Transport::WebSocket => open_websocket(endpoint, &room).await?,
            Transport::Bosh => open_bosh(endpoint, &room).await?,
        };
        let mut participant = Participant {
            room,
            nick: nick.to_owned(),
            node,
            occupants: BTreeSet::new(),
            met: BTreeSet::new(),
            link,
            endpoint: endpoint.clone(),
            pending,
            refused: None,
        };
        participant.login().await?;
        Ok(participant)
    }

    /// Joins the room and waits until the MUC reflects its own presence.
    pub async fn join(&mut self) -> Result<(), String> {
        let join = format!(
            "<presence xmlns='jabber:client' to='{}/{}'><x xmlns='http://jabber.org/protocol/muc'/></presence>",
            self.room_jid(),
            self.nick
        );
        self.send(&join).await?;
        let own = self.nick.clone();
        let step = self.endpoint.step;
        (self.wait_until(step, |p| p.occupants.contains(&own)).await)
            .map_err(|e| format!("{} joining {}: {e}", self.nick, self.room))
    }

    /// `<room>@<muc-domain>`.
    pub fn room_jid(&self) -> String {
        format!("{}@{}", self.room, self.endpoint.muc)
    }

    /// Sends a groupchat message with `body` and waits until the MUC reflects it back.
    pub async fn round_trip(&mut self, body: &str) -> Result<(), String> {
        let message = format!(
            "<message xmlns='jabber:client' to='{}' type='groupchat'><body>{body}</body></message>",
            self.room_jid()
        );
        self.send(&message).await?;
        let needle = format!("<body>{body}</body>");
        let deadline = Instant::now() + self.endpoint.step;
        let mut seen = std::mem::take(&mut self.pending);
        while !seen.contains(&needle) {
            if Instant::now() > deadline {
                return Err(format!(
                    "message {body} not reflected within {:?}",
                    self.endpoint.step
                ));
            }
            // Keep what follows the reflection for the next reader.
            seen = self.receive(Duration::from_millis(500)).await?;
        }
        Ok(())
    }

    /// Leaves the room (an `unavailable` presence) and closes the connection.
    pub async fn leave(mut self) -> Result<(), String> {
        let leave = format!(
            "<presence xmlns='jabber:client' type='unavailable' to='{}/{}'/>",
            self.room_jid(),
            self.nick
        );
        self.send(&leave).await?;
        match &mut self.link {
            Link::WebSocket(ws) => {
                let close = "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>";
                let _ = ws.send(Message::text(close)).await;
                let _ = SinkExt::close(ws).await;
            }
            Link::Bosh { .. } => {
                let (sid, rid) = self.next_rid();
                let end = format!("<body rid='{rid}' sid='{sid}' type='terminate' xmlns='http://jabber.org/protocol/httpbind'/>");
                let _ = self.post(end).await;
            }
        }
        Ok(())
    }

    /// Occupants now, as far as it has read (including itself).
    pub fn occupants(&self) -> &BTreeSet<String> {
        &self.occupants
    }

    /// Everyone it has seen in the room at some point (including itself), also those who left.
    pub fn met(&self) -> &BTreeSet<String> {
        &self.met
    }

    /// Waits until every nick in `others` is in the room as this participant sees it.
    pub async fn sees(&mut self, others: &[&str], limit: Duration) -> Result<(), String> {
        let wanted: Vec<String> = others.iter().map(|s| s.to_string()).collect();
        self.wait_until(limit, |p| wanted.iter().all(|w| p.occupants.contains(w)))
            .await
    }

    /// Reads for `period` and returns the occupants by then.
    pub async fn settle(&mut self, period: Duration) -> Result<&BTreeSet<String>, String> {
        let deadline = Instant::now() + period;
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            self.receive(left.min(Duration::from_millis(200))).await?;
        }
        Ok(&self.occupants)
    }

    async fn login(&mut self) -> Result<(), String> {
        if let Link::WebSocket(_) = self.link {
            self.send(&open_frame(&self.endpoint.domain)).await?;
        }
        self.expect("<mechanisms").await?;
        self.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='ANONYMOUS'/>")
            .await?;
        self.expect("<success").await?;
        self.restart().await?;
        self.expect("<bind").await?;
        self.send("<iq xmlns='jabber:client' type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
            .await?;
        let bound = self.expect("<jid>").await?;
        text_of(&bound, "jid").ok_or_else(|| format!("no jid in {bound}"))?;
        Ok(())
    }

    async fn restart(&mut self) -> Result<(), String> {
        match &mut self.link {
            Link::WebSocket(_) => self.send(&open_frame(&self.endpoint.domain)).await,
            Link::Bosh { .. } => {
                let (sid, rid) = self.next_rid();
                let body = format!(
                    "<body rid='{rid}' sid='{sid}' to='{}' xml:lang='en' xmpp:restart='true' xmlns:xmpp='urn:xmpp:xbosh' xmlns='http://jabber.org/protocol/httpbind'/>",
                    self.endpoint.domain
                );
                let answer = self.post(body).await?;
                self.take_in(&answer);
                self.pending = answer;
                Ok(())
            }
        }
    }

    fn next_rid(&mut self) -> (String, u64) {
        match &mut self.link {
            Link::Bosh { sid, rid, .. } => {
                *rid += 1;
                (sid.clone(), *rid)
            }
            Link::WebSocket(_) => (String::new(), 0),
        }
    }

    async fn post(&mut self, body: String) -> Result<String, String> {
        let Link::Bosh { url, .. } = &self.link else {
            return Err("not a BOSH session".into());
        };
        let response = (self.endpoint.http.post(url.as_str()))
            .header("content-type", "text/xml; charset=utf-8")
            .timeout(self.endpoint.step + Duration::from_secs(10))
            .body(body)
            .send()
            .await
            .map_err(|e| format!("BOSH request failed: {}", error_chain(&e)))?;
        if !response.status().is_success() {
            return Err(format!("BOSH answered {}", response.status()));
        }
        response.text().await.map_err(|e| e.to_string())
    }

    /// Sends one stanza (or nonza).
    pub async fn send(&mut self, xml: &str) -> Result<(), String> {
        match &mut self.link {
            Link::WebSocket(ws) => (ws.send(Message::text(xml)).await)
                .map_err(|e| format!("WebSocket send failed: {e}")),
            Link::Bosh { .. } => {
                let (sid, rid) = self.next_rid();
                let body = format!(
                    "<body rid='{rid}' sid='{sid}' xmlns='http://jabber.org/protocol/httpbind'>{xml}</body>"
                );
                let answer = self.post(body).await?;
                self.take_in(&answer);
                self.pending.push_str(&answer);
                Ok(())
            }
        }
    }

    /// Reads what the server sends next (a frame, or one BOSH poll's answer).
    async fn receive(&mut self, limit: Duration) -> Result<String, String> {
        if !self.pending.is_empty() {
            return Ok(std::mem::take(&mut self.pending));
        }
        let text = match &mut self.link {
            Link::WebSocket(ws) => match tokio::time::timeout(limit, ws.next()).await {
                Err(_) => String::new(),
                Ok(Some(Ok(Message::Text(text)))) => text.to_string(),
                Ok(Some(Ok(Message::Close(_)))) | Ok(None) => {
                    return Err("the WebSocket closed".into())
                }
                Ok(Some(Ok(_))) => String::new(),
                Ok(Some(Err(e))) => return Err(format!("WebSocket failed: {e}")),
            },
            Link::Bosh { .. } => {
                let (sid, rid) = self.next_rid();
                self.post(format!(
                    "<body rid='{rid}' sid='{sid}' xmlns='http://jabber.org/protocol/httpbind'/>"
                ))
                .await?
            }
        };
        if text.contains("type='terminate'") || text.contains("type=\"terminate\"") {
            return Err(format!("the server ended the session: {text}"));
        }
        if let Some(condition) = condition(&text, STREAM_ERRORS) {
            let hint = domain_hint(&condition, &self.endpoint);
            return Err(format!("the server ended the stream: {condition}{hint}"));
        }
        self.take_in(&text);
        Ok(text)
    }

    /// Updates the occupant set from any MUC presences in `xml`.
    fn take_in(&mut self, xml: &str) {
        let prefix = format!("{}/", self.room_jid());
        for tag in tags(xml, "presence") {
            let Some(from) = attr(tag, "from") else {
                continue;
            };
            let Some(nick) = from.strip_prefix(&prefix) else {
                continue;
            };
            match attr(tag, "type").as_deref() {
                Some("unavailable") => {
                    self.occupants.remove(nick);
                }
                Some("error") if nick == self.nick => {
                    let condition = condition(xml, STANZA_ERRORS);
                    self.refused = Some(condition.unwrap_or_else(|| "an error".into()));
                }
                Some("error") => {}
                _ => {
                    self.occupants.insert(nick.to_owned());
                    self.met.insert(nick.to_owned());
                }
            }
        }
    }

    /// Reads until something containing `needle` arrives; returns it.
    async fn expect(&mut self, needle: &str) -> Result<String, String> {
        let step = self.endpoint.step;
        let deadline = Instant::now() + step;
        let mut seen = String::new();
        while Instant::now() < deadline {
            let text = self.receive(Duration::from_secs(1)).await?;
            if text.contains(needle) {
                return Ok(text);
            }
            // SASL's answer to ANONYMOUS: a deployment with authentication on (a secure domain,
            // JWT) lets no anonymous participant in.
            if let Some(reason) = sasl_failure(&text) {
                return Err(format!(
                    "the server refused anonymous login: {reason} (bench logs in anonymously; is authentication on?)"
                ));
            }
            seen.push_str(&text);
        }
        Err(format!("no {needle} within {step:?}; got: {seen}"))
    }

    async fn wait_until(
        &mut self,
        limit: Duration,
        done: impl Fn(&Participant) -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        while !done(self) {
            if let Some(condition) = &self.refused {
                let hint = format!(
                    " (is the MUC domain {} right? --muc-domain)",
                    self.endpoint.muc
                );
                return Err(format!("the MUC refused the presence: {condition}{hint}"));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "timed out; {} sees {:?}",
                    self.nick, self.occupants
                ));
            }
            self.receive(Duration::from_millis(500)).await?;
        }
        Ok(())
    }
}

/// The value of attribute `name` in `tag_text`.
fn attr(tag_text: &str, name: &str) -> Option<String> {
    for quote in ['\'', '"'] {
        let key = format!(" {name}={quote}");
        if let Some(start) = tag_text.find(&key) {
            let rest = &tag_text[start + key.len()..];
            return rest.find(quote).map(|end| unescape(&rest[..end]));
        }
    }
    None
}

fn unescape(text: &str) -> String {
    text.replace("&apos;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// Opening tags of every `<element` in `xml`.
fn tags<'a>(xml: &'a str, element: &str) -> Vec<&'a str> {
    let open = format!("<{element}");
    xml.match_indices(&open)
        .map(|(i, _)| &xml[i..])
        .filter(|rest| rest[open.len()..].starts_with([' ', '>', '/']))
        .map(|rest| &rest[..rest.find('>').map_or(rest.len(), |e| e + 1)])
        .collect()
}

/// The namespace of stream error conditions (RFC 6120 4.9.3).
const STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
/// The namespace of stanza error conditions (RFC 6120 8.3.3).
const STANZA_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

/// The first error condition of namespace `ns` in `xml`: the name of the element that declares
/// it (`<host-unknown xmlns='...'/>`), `<text>` left out.
fn condition(xml: &str, ns: &str) -> Option<String> {
    xml.match_indices(ns).find_map(|(at, _)| {
        let open = xml[..at].rfind('<')?;
        let name = xml[open + 1..].split([' ', '/', '>']).next()?;
        (name != "text").then(|| name.to_owned())
    })
}

/// The condition of a SASL `<failure>` in `xml` (`not-authorized`), if there is one.
fn sasl_failure(xml: &str) -> Option<String> {
    let tag = *tags(xml, "failure").first()?;
    let rest = &xml[xml.find(tag)? + tag.len()..];
    let name = (rest.trim_start().strip_prefix('<'))
        .and_then(|r| r.split([' ', '/', '>']).next())
        .filter(|name| !name.is_empty() && !tag.ends_with("/>"));
    Some(name.unwrap_or("failure").to_owned())
}

/// A pointer to `--xmpp-domain` when `condition` says the server does not serve that domain.
fn domain_hint(condition: &str, endpoint: &Endpoint) -> String {
    match condition {
        "host-unknown" | "improper-addressing" | "host-gone" => format!(
            " (is the XMPP domain {} right? --xmpp-domain)",
            endpoint.domain
        ),
        _ => String::new(),
    }
}

fn text_of(xml: &str, element: &str) -> Option<String> {
    let start = xml.find(&format!("<{element}>"))? + element.len() + 2;
    let end = xml[start..].find(&format!("</{element}>"))?;
    Some(unescape(&xml[start..start + end]))
}

fn open_frame(domain: &str) -> String {
    format!("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='{domain}' version='1.0'/>")
}

fn shard(headers: &http::HeaderMap) -> String {
    (headers.get("x-jitsi-shard").and_then(|v| v.to_str().ok()))
        .unwrap_or_default()
        .to_owned()
}

async fn open_websocket(endpoint: &Endpoint, room: &str) -> Result<(Link, String, String), String> {
    use tokio_tungstenite::tungstenite::Error;
    let url = format!("{}/xmpp-websocket?room={room}", endpoint.base);
    let url = url
        .replacen("https://", "wss://", 1)
        .replacen("http://", "ws://", 1);
    let request = |url: &str| {
        let mut request = url.into_client_request().map_err(|e| e.to_string())?;
        let xmpp = http::HeaderValue::from_static("xmpp");
        request.headers_mut().insert("sec-websocket-protocol", xmpp);
        Ok::<_, String>(request)
    };
    let connector = || Some(tokio_tungstenite::Connector::Rustls(endpoint.tls.clone()));
    let connect = |url: String| async move {
        let connecting = tokio_tungstenite::connect_async_tls_with_config(
            request(&url)?,
            None,
            false,
            connector(),
        );
        (tokio::time::timeout(endpoint.step, connecting).await)
            .map_err(|_| format!("no WebSocket to {url} within {:?}", endpoint.step))
    };
    match connect(url.clone()).await? {
        Ok((ws, response)) => Ok((
            Link::WebSocket(Box::new(ws)),
            shard(response.headers()),
            String::new(),
        )),
        // Redirect mode: follow the 307 to the node, as a browser does.
        Err(Error::Http(response)) if response.status() == 307 => {
            let node = shard(response.headers());
            let location = (response.headers().get("location"))
                .and_then(|v| v.to_str().ok())
                .ok_or("a 307 without Location")?
                .to_owned();
            let target = location
                .replacen("https://", "wss://", 1)
                .replacen("http://", "ws://", 1);
            let (ws, _) = (connect(target).await?).map_err(|e| {
                format!("following the redirect to {location}: {}", error_chain(&e))
            })?;
            Ok((Link::WebSocket(Box::new(ws)), node, String::new()))
        }
        Err(e) => Err(format!("WebSocket to {url} failed: {}", error_chain(&e))),
    }
}

async fn open_bosh(endpoint: &Endpoint, room: &str) -> Result<(Link, String, String), String> {
    let mut url = format!("{}/http-bind?room={room}", endpoint.base);
    let body = format!(
        "<body rid='1000' to='{}' xml:lang='en' wait='5' hold='1' content='text/xml; charset=utf-8' ver='1.6' xmpp:version='1.0' xmlns:xmpp='urn:xmpp:xbosh' xmlns='http://jabber.org/protocol/httpbind'/>",
        endpoint.domain
    );
    let post = |url: String| {
        (endpoint.http.post(url))
            .header("content-type", "text/xml; charset=utf-8")
            .timeout(endpoint.step)
            .body(body.clone())
            .send()
    };
    let mut response = (post(url.clone()).await)
        .map_err(|e| format!("BOSH to {url} failed: {}", error_chain(&e)))?;
    let node = shard(response.headers());
    if response.status() == 307 {
        // Redirect mode: the session lives on the node's own URL from now on.
        url = (response.headers().get("location"))
            .and_then(|v| v.to_str().ok())
            .ok_or("a 307 without Location")?
            .to_owned();
        response = (post(url.clone()).await)
            .map_err(|e| format!("BOSH to {url} failed: {}", error_chain(&e)))?;
    }
    if !response.status().is_success() {
        return Err(format!(
            "BOSH session request answered {}",
            response.status()
        ));
    }
    let text = response.text().await.map_err(|e| e.to_string())?;
    let body = tags(&text, "body").first().copied().unwrap_or_default();
    if let (Some(condition), Some("terminate")) =
        (attr(body, "condition"), attr(body, "type").as_deref())
    {
        let hint = domain_hint(&condition, endpoint);
        return Err(format!(
            "the server refused the BOSH session: {condition}{hint}"
        ));
    }
    let sid = attr(body, "sid").ok_or_else(|| format!("no BOSH sid in {text}"))?;
    Ok((
        Link::Bosh {
            url,
            sid,
            rid: 1000,
        },
        node,
        text,
    ))
}

#[cfg(test)]
mod tests {
    use super::{condition, sasl_failure, STANZA_ERRORS, STREAM_ERRORS};

    #[test]
    fn error_conditions_are_named() {
        let stream = "<stream:error xmlns:stream='http://etherx.jabber.org/streams'><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>no</text></stream:error>";
        assert_eq!(
            condition(stream, STREAM_ERRORS).as_deref(),
            Some("host-unknown")
        );
        let presence = "<presence type='error' from='r@muc.x/p0'><error type='cancel'><not-allowed xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>";
        assert_eq!(
            condition(presence, STANZA_ERRORS).as_deref(),
            Some("not-allowed")
        );
        assert_eq!(
            condition("<presence from='r@muc.x/p0'/>", STANZA_ERRORS),
            None
        );
    }

    #[test]
    fn a_sasl_failure_gives_its_condition() {
        let failure =
            "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>";
        assert_eq!(sasl_failure(failure).as_deref(), Some("not-authorized"));
        let bare = "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>";
        assert_eq!(sasl_failure(bare).as_deref(), Some("failure"));
        assert_eq!(
            sasl_failure("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"),
            None
        );
    }
}
