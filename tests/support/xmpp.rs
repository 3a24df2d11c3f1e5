//! Minimal XMPP clients as a Jitsi client uses them: anonymous login on `meet.jitsi`, then a MUC
//! join of `<room>@muc.meet.jitsi`, over WebSocket (RFC 7395, `/xmpp-websocket?room=`) or BOSH
//! (XEP-0206, `/http-bind?room=`), through the router. Enough XML handling for the stanzas these
//! flows exchange; each participant keeps the set of occupants it has seen in its room.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use jitsi_router::demo::prosody::{DOMAIN, MUC};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::{Certs, Router};

/// How a participant talks to its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    Bosh,
}

/// The value of attribute `name` in the first tag of `xml` that starts with `<tag`.
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

fn text_of(xml: &str, element: &str) -> Option<String> {
    let start = xml.find(&format!("<{element}>"))? + element.len() + 2;
    let end = xml[start..].find(&format!("</{element}>"))?;
    Some(unescape(&xml[start..start + end]))
}

enum Link {
    WebSocket(Box<super::Ws>),
    Bosh {
        client: reqwest::Client,
        url: String,
        sid: String,
        rid: u64,
    },
}

/// One person in one room.
pub struct Participant {
    pub room: String,
    pub nick: String,
    /// The node that served the signalling connection (`X-Jitsi-Shard`).
    pub node: String,
    occupants: BTreeSet<String>,
    link: Link,
    /// Received but not yet read: BOSH answers to what we send may carry stanzas.
    pending: String,
}

const STEP: Duration = Duration::from_secs(20);

impl Participant {
    /// Connects through `router`, logs in anonymously and joins `room` as `nick`. In redirect
    /// mode the `307` is followed to the node, as a browser would.
    pub async fn join(
        router: &Router,
        certs: &Certs,
        transport: Transport,
        room: &str,
        nick: &str,
    ) -> Result<Participant, String> {
        let room = room.to_lowercase();
        let (link, node, pending) = match transport {
            Transport::WebSocket => open_websocket(router, certs, &room).await?,
            Transport::Bosh => open_bosh(router, &room).await?,
        };
        let mut participant = Participant {
            room,
            nick: nick.to_owned(),
            node,
            occupants: BTreeSet::new(),
            link,
            pending,
        };
        participant.login().await?;
        let join = format!(
            "<presence xmlns='jabber:client' to='{}@{MUC}/{nick}'><x xmlns='http://jabber.org/protocol/muc'/></presence>",
            participant.room
        );
        participant.send(&join).await?;
        let own = nick.to_owned();
        participant
            .wait_until(STEP, |p| p.occupants.contains(&own))
            .await
            .map_err(|e| format!("{nick} joining {}: {e}", participant.room))?;
        Ok(participant)
    }

    async fn login(&mut self) -> Result<(), String> {
        if let Link::WebSocket(_) = self.link {
            self.send(&open_frame()).await?;
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
            Link::WebSocket(_) => self.send(&open_frame()).await,
            Link::Bosh { .. } => {
                let (sid, rid) = self.next_rid();
                let body = format!(
                    "<body rid='{rid}' sid='{sid}' to='{DOMAIN}' xml:lang='en' xmpp:restart='true' xmlns:xmpp='urn:xmpp:xbosh' xmlns='http://jabber.org/protocol/httpbind'/>"
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
            Link::WebSocket(_) => unreachable!("only BOSH counts request ids"),
        }
    }

    async fn post(&mut self, body: String) -> Result<String, String> {
        let Link::Bosh { client, url, .. } = &self.link else {
            unreachable!("only BOSH posts");
        };
        let response = client
            .post(url.as_str())
            .header("content-type", "text/xml; charset=utf-8")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("BOSH request failed: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("BOSH answered {}", response.status()));
        }
        response.text().await.map_err(|e| e.to_string())
    }

    /// Sends one stanza (or nonza).
    pub async fn send(&mut self, xml: &str) -> Result<(), String> {
        match &mut self.link {
            Link::WebSocket(ws) => ws
                .send(Message::text(xml))
                .await
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
        self.take_in(&text);
        Ok(text)
    }

    /// Updates the occupant set from any MUC presences in `xml`.
    fn take_in(&mut self, xml: &str) {
        let prefix = format!("{}@{MUC}/", self.room);
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
                Some("error") => {}
                _ => {
                    self.occupants.insert(nick.to_owned());
                }
            }
        }
    }

    /// Reads until something containing `needle` arrives; returns it.
    async fn expect(&mut self, needle: &str) -> Result<String, String> {
        let deadline = Instant::now() + STEP;
        let mut seen = String::new();
        while Instant::now() < deadline {
            let text = self.receive(Duration::from_secs(1)).await?;
            if text.contains(needle) {
                return Ok(text);
            }
            seen.push_str(&text);
        }
        Err(format!("no {needle} within {STEP:?}; got: {seen}"))
    }

    async fn wait_until(
        &mut self,
        limit: Duration,
        done: impl Fn(&Participant) -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        while !done(self) {
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

    /// Waits until every nick in `others` is in the room as this participant sees it.
    pub async fn sees(&mut self, others: &[&str], limit: Duration) -> Result<(), String> {
        let wanted: Vec<String> = others.iter().map(|s| s.to_string()).collect();
        self.wait_until(limit, |p| wanted.iter().all(|w| p.occupants.contains(w)))
            .await
    }

    /// Leaves the room (an `unavailable` presence), as a client hanging up does.
    pub async fn leave(&mut self) -> Result<(), String> {
        let leave = format!(
            "<presence xmlns='jabber:client' type='unavailable' to='{}@{MUC}/{}'/>",
            self.room, self.nick
        );
        self.send(&leave).await
    }

    /// Occupants seen so far (including itself).
    pub fn occupants(&self) -> &BTreeSet<String> {
        &self.occupants
    }

    /// Reads for `period` and returns the occupants seen by then.
    pub async fn settle(&mut self, period: Duration) -> Result<&BTreeSet<String>, String> {
        let deadline = Instant::now() + period;
        while Instant::now() < deadline {
            self.receive(Duration::from_millis(200)).await?;
        }
        Ok(&self.occupants)
    }
}

fn open_frame() -> String {
    format!("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='{DOMAIN}' version='1.0'/>")
}

async fn open_websocket(
    router: &Router,
    certs: &Certs,
    room: &str,
) -> Result<(Link, String, String), String> {
    use tokio_tungstenite::tungstenite::Error;
    let path = format!("/xmpp-websocket?room={room}");
    let mut request = format!("wss://localhost:{}{path}", router.https.port())
        .into_client_request()
        .map_err(|e| e.to_string())?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "xmpp".parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(router.https)
        .await
        .map_err(|e| e.to_string())?;
    let connector = tokio_tungstenite::Connector::Rustls(certs.client_config());
    let shard = |headers: &http::HeaderMap| {
        headers
            .get("x-jitsi-shard")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    match tokio_tungstenite::client_async_tls_with_config(request, tcp, None, Some(connector)).await
    {
        Ok((ws, response)) => Ok((
            Link::WebSocket(Box::new(ws)),
            shard(response.headers()),
            String::new(),
        )),
        // Redirect mode: follow the 307 to the node, as a browser does.
        Err(Error::Http(response)) if response.status() == 307 => {
            let location = response.headers()["location"].to_str().unwrap().to_owned();
            let node = shard(response.headers());
            let target = location.replacen("http://", "ws://", 1);
            let mut request = target.into_client_request().map_err(|e| e.to_string())?;
            request
                .headers_mut()
                .insert("sec-websocket-protocol", "xmpp".parse().unwrap());
            let (ws, _) = tokio_tungstenite::connect_async(request)
                .await
                .map_err(|e| format!("following the redirect to {location}: {e}"))?;
            Ok((Link::WebSocket(Box::new(ws)), node, String::new()))
        }
        Err(e) => Err(format!("WebSocket to the router failed: {e}")),
    }
}

async fn open_bosh(router: &Router, room: &str) -> Result<(Link, String, String), String> {
    let client = router.client();
    let mut url = router.url(&format!("/http-bind?room={room}"));
    let body = format!(
        "<body rid='1000' to='{DOMAIN}' xml:lang='en' wait='5' hold='1' content='text/xml; charset=utf-8' ver='1.6' xmpp:version='1.0' xmlns:xmpp='urn:xmpp:xbosh' xmlns='http://jabber.org/protocol/httpbind'/>"
    );
    let mut response = client
        .post(&url)
        .body(body.clone())
        .send()
        .await
        .map_err(|e| format!("BOSH to the router failed: {e}"))?;
    let node = response
        .headers()
        .get("x-jitsi-shard")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if response.status() == 307 {
        // Redirect mode: the session lives on the node's own URL from now on.
        url = response.headers()["location"].to_str().unwrap().to_owned();
        response = reqwest::Client::new()
            .post(&url)
            .body(body)
            .send()
            .await
            .map_err(|e| format!("BOSH to {url} failed: {e}"))?;
    }
    if !response.status().is_success() {
        return Err(format!(
            "BOSH session request answered {}",
            response.status()
        ));
    }
    let text = response.text().await.map_err(|e| e.to_string())?;
    let sid = tags(&text, "body")
        .first()
        .and_then(|tag| attr(tag, "sid"))
        .ok_or_else(|| format!("no BOSH sid in {text}"))?;
    let client = if url.starts_with("https://") {
        client
    } else {
        reqwest::Client::new()
    };
    Ok((
        Link::Bosh {
            client,
            url,
            sid,
            rid: 1000,
        },
        node,
        text,
    ))
}
