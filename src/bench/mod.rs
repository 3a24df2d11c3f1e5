//! `jitsi-router bench`: what joining a conference through the router costs, measured the way
//! participants meet, against an operator's own deployment.
//!
//! Every simulated participant does what a Jitsi web client does, over real protocols: the room
//! page, `config.js?room=`, then XMPP over WebSocket or BOSH (anonymous login, resource bind),
//! a MUC join, a groupchat message at `--message-rate` timed until the MUC reflects it, and a
//! clean leave. Participants of one room spread over the `--target`s (router replicas). The
//! report has per-phase latency percentiles (HDR histograms), errors by kind, the node each
//! participant reached (`X-Jitsi-Shard`), and the rooms that split: participants on different
//! nodes, or not seeing each other's presence.

pub mod domains;
pub mod report;
pub mod xmpp;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::error_chain::error_chain;
use domains::Domain;
use report::{Phase, Report, RoomOutcome, Stats};
use xmpp::{Endpoint, Participant, Transport};

/// Which transport each participant uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transports {
    /// XMPP over WebSocket (what Jitsi web clients use by default).
    #[value(name = "websocket")]
    WebSocket,
    /// XMPP over BOSH.
    Bosh,
    /// Every other participant over BOSH.
    Mixed,
}

/// What to run: the options of `jitsi-router bench` that say what participants do.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Base URL of a router (repeat for replicas: a room's participants spread over them).
    #[arg(long = "target", required = true, value_name = "URL")]
    pub targets: Vec<String>,
    /// Rooms.
    #[arg(long, default_value_t = 20)]
    pub rooms: usize,
    /// Participants per room.
    #[arg(long, default_value_t = 5)]
    pub participants: usize,
    /// How long everyone stays once all have joined.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Signalling transport.
    #[arg(long, value_enum, default_value = "websocket")]
    pub transport: Transports,
    /// Groupchat messages per participant: `1/s`, `10/min`, `0` for none.
    #[arg(long = "message-rate", value_name = "MESSAGE_RATE", default_value = "1/s", value_parser = parse_rate)]
    pub message_every: Duration,
    /// Participants arrive evenly over this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub ramp: Duration,
    /// Trust this PEM CA for the targets (besides the system's roots).
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    pub ca: Option<std::path::PathBuf>,
    /// Accept any certificate (a self-signed test deployment).
    #[arg(long)]
    pub insecure: bool,
    /// The XMPP domain [default: `hosts.domain` of the first target's config.js, else
    /// meet.jitsi]
    #[arg(long)]
    pub xmpp_domain: Option<String>,
    /// The MUC domain [default: `hosts.muc` of the first target's config.js, else
    /// muc.meet.jitsi]
    #[arg(long)]
    pub muc_domain: Option<String>,
    /// The longest wait for one step's answer.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub step_timeout: Duration,
    /// Show a progress bar (on a terminal); not an option: on unless JSON is asked for.
    #[arg(skip = true)]
    pub progress: bool,
}

impl Settings {
    fn transport_of(&self, index: usize) -> Transport {
        match self.transport {
            Transports::WebSocket => Transport::WebSocket,
            Transports::Bosh => Transport::Bosh,
            Transports::Mixed if index % 2 == 1 => Transport::Bosh,
            Transports::Mixed => Transport::WebSocket,
        }
    }
}

/// A `--message-rate` such as `1/s`, `10/min`, `2` (per second), or `0` (none).
pub fn parse_rate(text: &str) -> Result<Duration, String> {
    let (count, per) = text.split_once('/').unwrap_or((text, "s"));
    let count: f64 = (count.trim().parse())
        .map_err(|_| format!("--message-rate {text:?}: expected a number per s, min or h"))?;
    let per = match per.trim() {
        "s" | "sec" | "second" => 1.0,
        "m" | "min" | "minute" => 60.0,
        "h" | "hour" => 3600.0,
        other => return Err(format!("--message-rate {text:?}: unknown unit {other:?}")),
    };
    if !(count.is_finite() && count >= 0.0) || count > 1000.0 {
        return Err(format!(
            "--message-rate {text:?}: between 0 and 1000 per unit"
        ));
    }
    Ok(if count == 0.0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(per / count)
    })
}

/// Builds the HTTP and TLS clients for `settings`.
fn endpoints(settings: &Settings, targets: &[String]) -> Result<Vec<Endpoint>, String> {
    let tls = Arc::new(client_tls(settings)?);
    let http = reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        // A router in redirect mode answers 307: BOSH and the page follow it themselves.
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(settings.step_timeout)
        .no_proxy()
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    (targets.iter())
        .map(|base| {
            let base = base.trim_end_matches('/').to_owned();
            if !(base.starts_with("https://") || base.starts_with("http://")) {
                return Err(format!(
                    "--target {base:?}: expected an https:// or http:// URL"
                ));
            }
            Ok(Endpoint {
                base,
                tls: tls.clone(),
                http: http.clone(),
                domain: String::new(),
                muc: String::new(),
                step: settings.step_timeout,
            })
        })
        .collect()
}

fn client_tls(settings: &Settings) -> Result<rustls::ClientConfig, String> {
    let mut config = if settings.insecure {
        insecure_client_config()
    } else {
        crate::tls::upstream_client_config(settings.ca.as_deref())
            .map_err(|e| format!("--ca: {e}"))?
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A client config that accepts any server certificate (`--insecure`; load scripts against a
/// throw-away self-signed certificate). Handshake signatures are still checked.
pub fn insecure_client_config() -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth()
}

/// `--insecure`: any certificate is accepted (signatures are still checked).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What one participant saw.
struct Seen {
    room: usize,
    nick: String,
    /// The node of its signalling connection, once connected.
    node: Option<String>,
    /// Everyone it saw in its room (None: it never joined).
    occupants: Option<Vec<String>>,
}

/// Runs the benchmark against `targets` (the settings' own, or one node for `--direct`).
pub async fn run(settings: &Settings, targets: &[String]) -> Result<Report, String> {
    let (endpoints, domains) = endpoints_with_domains(settings, targets).await?;
    let total = settings.rooms * settings.participants;
    let stats = Arc::new(Stats::default());
    let progress = progress_bar(settings, total as u64);
    let started = Instant::now();
    // Each pass (`--direct`'s, then the router's) has rooms of its own: rooms a pass left live
    // on a node would draw the next pass's participants there, however the router places.
    static PASSES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let pass = PASSES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let run_id = format!("{}-{pass}", std::process::id());
    // Everyone stays until the last participant has joined (or failed) and `duration` has
    // passed, sending messages meanwhile; then reads the room's occupants once more and leaves.
    let arrivals = Arc::new(Arrivals::new(total, settings.duration, progress.clone()));
    let seen = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..total {
        let (room, member) = (index % settings.rooms, index / settings.rooms);
        let endpoint = endpoints[member % endpoints.len()].clone();
        let arrival = settings.ramp.mul_f64(index as f64 / total.max(1) as f64);
        let transport = settings.transport_of(member);
        let room_name = format!("bench-{run_id}-{room}");
        let nick = format!("p{member}");
        let (stats, seen) = (stats.clone(), seen.clone());
        let arrivals = arrivals.clone();
        let message_every = settings.message_every;
        tasks.spawn(async move {
            tokio::time::sleep_until(started + arrival).await;
            let mut ticket = Ticket(Some(&arrivals));
            let outcome = participate(
                &endpoint,
                transport,
                &room_name,
                &nick,
                &stats,
                message_every,
                &mut ticket,
            )
            .await;
            drop(ticket);
            let (node, occupants) = match outcome {
                Ok((node, occupants)) => (Some(node), Some(occupants)),
                Err((phase, node, error)) => {
                    stats.error(phase, &error);
                    (node, None)
                }
            };
            if let Ok(mut seen) = seen.lock() {
                seen.push(Seen {
                    room,
                    nick,
                    node,
                    occupants,
                });
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    progress.finish_and_clear();
    let seen = std::mem::take(&mut *seen.lock().map_err(|_| "a participant task panicked")?);
    let rooms = rooms(settings.rooms, seen);
    Ok(Report::new(
        &stats,
        total,
        rooms,
        started.elapsed(),
        domains,
    ))
}

/// The endpoints to join through, each told the XMPP and MUC domains: those given, else
/// those the first endpoint's `config.js` names, else docker-jitsi-meet's defaults.
async fn endpoints_with_domains(
    settings: &Settings,
    targets: &[String],
) -> Result<(Vec<Endpoint>, [Domain; 2]), String> {
    let mut endpoints = endpoints(settings, targets)?;
    let given = [
        settings.xmpp_domain.as_deref(),
        settings.muc_domain.as_deref(),
    ];
    let config_js = match (given, endpoints.first()) {
        ([Some(_), Some(_)], _) | (_, None) => None,
        (_, Some(first)) => (get(first, &format!("{}/config.js", first.base)).await).ok(),
    };
    let domains = domains::resolve(given, config_js.as_deref());
    for endpoint in &mut endpoints {
        endpoint.domain.clone_from(&domains[0].name);
        endpoint.muc.clone_from(&domains[1].name);
    }
    Ok((endpoints, domains))
}

/// Groups what participants saw by room, and tells which rooms split.
fn rooms(count: usize, seen: Vec<Seen>) -> Vec<RoomOutcome> {
    let mut by_room: BTreeMap<usize, Vec<Seen>> = BTreeMap::new();
    for s in seen {
        by_room.entry(s.room).or_default().push(s);
    }
    (0..count)
        .map(|room| {
            let members = by_room.remove(&room).unwrap_or_default();
            let joined: Vec<&Seen> = members.iter().filter(|s| s.occupants.is_some()).collect();
            let mut nodes: Vec<String> = (members.iter())
                .filter_map(|s| s.node.clone())
                .filter(|n| !n.is_empty())
                .collect();
            nodes.sort();
            nodes.dedup();
            // Every joined participant must have seen every other joined one.
            let blind = joined.iter().any(|s| {
                let theirs = s.occupants.as_deref().unwrap_or_default();
                joined.iter().any(|other| !theirs.contains(&other.nick))
            });
            RoomOutcome {
                room,
                participants: members.len(),
                joined: joined.len(),
                split: nodes.len() > 1 || blind,
                nodes,
            }
        })
        .collect()
}

/// Counts participants in (joined, or failed on the way), and says when all are.
struct Arrivals {
    total: usize,
    count: std::sync::atomic::AtomicUsize,
    all_in: std::sync::OnceLock<Instant>,
    changed: tokio::sync::Notify,
    duration: Duration,
    progress: indicatif::ProgressBar,
}

impl Arrivals {
    fn new(total: usize, duration: Duration, progress: indicatif::ProgressBar) -> Arrivals {
        Arrivals {
            total,
            count: std::sync::atomic::AtomicUsize::new(0),
            all_in: std::sync::OnceLock::new(),
            changed: tokio::sync::Notify::new(),
            duration,
            progress,
        }
    }

    fn arrive(&self) {
        let count = self.count.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
        self.progress.inc(1);
        if count >= self.total {
            let _ = self.all_in.set(Instant::now());
            self.changed.notify_waiters();
            let stay = humantime::format_duration(self.duration);
            self.progress
                .set_message(format!("everyone in; staying {stay}"));
        }
    }

    /// When participants leave: `duration` after the last arrived; `None` before that.
    fn leave_at(&self) -> Option<Instant> {
        self.all_in.get().map(|&at| at + self.duration)
    }

    async fn wait_leave_at(&self) -> Instant {
        loop {
            let changed = self.changed.notified();
            if let Some(at) = self.leave_at() {
                return at;
            }
            changed.await;
        }
    }
}

/// A participant's place in [`Arrivals`]: it arrives once, when it has joined, or when it
/// gives up (dropped).
struct Ticket<'a>(Option<&'a Arrivals>);

impl Ticket<'_> {
    fn arrive(&mut self) {
        if let Some(arrivals) = self.0.take() {
            arrivals.arrive();
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.arrive();
    }
}

type Failure = (Phase, Option<String>, String);

/// One participant, from the page to leaving. Returns its node and the occupants it saw.
async fn participate(
    endpoint: &Endpoint,
    transport: Transport,
    room: &str,
    nick: &str,
    stats: &Stats,
    message_every: Duration,
    ticket: &mut Ticket<'_>,
) -> Result<(String, Vec<String>), Failure> {
    let fail = |phase: Phase, node: Option<String>| move |e: String| (phase, node, e);
    let page = format!("{}/{room}", endpoint.base);
    timed(stats, Phase::Page, get(endpoint, &page))
        .await
        .map_err(fail(Phase::Page, None))?;
    let config = format!("{}/config.js?room={room}", endpoint.base);
    timed(stats, Phase::Config, get(endpoint, &config))
        .await
        .map_err(fail(Phase::Config, None))?;
    let connecting = Participant::connect(endpoint, transport, room, nick);
    let mut p = timed(stats, Phase::Connect, connecting)
        .await
        .map_err(fail(Phase::Connect, None))?;
    let node = Some(p.node.clone());
    timed(stats, Phase::Join, p.join())
        .await
        .map_err(fail(Phase::Join, node.clone()))?;
    let arrivals = ticket.0.expect("a participant arrives once");
    ticket.arrive();
    let mut sequence = 0u64;
    let mut next = Instant::now();
    if !message_every.is_zero() {
        loop {
            next += message_every;
            if arrivals.leave_at().is_some_and(|leave| next >= leave) {
                break;
            }
            sequence += 1;
            let body = format!("{nick}-{sequence}");
            timed(stats, Phase::Message, p.round_trip(&body))
                .await
                .map_err(fail(Phase::Message, node.clone()))?;
            // Read what arrives meanwhile (presences), without sending.
            let idle = next.saturating_duration_since(Instant::now());
            if !idle.is_zero() {
                p.settle(idle)
                    .await
                    .map_err(fail(Phase::Message, node.clone()))?;
            }
        }
    }
    let leave_at = arrivals.wait_leave_at().await;
    let rest = leave_at.saturating_duration_since(Instant::now());
    (p.settle(rest.max(Duration::from_millis(300))).await)
        .map_err(fail(Phase::Join, node.clone()))?;
    // Whom it met: a participant that left first is no less met.
    let occupants: Vec<String> = p.met().iter().cloned().collect();
    let node = p.node.clone();
    if let Err(e) = p.leave().await {
        stats.error(Phase::Leave, &e);
    }
    Ok((node, occupants))
}

/// Runs `step`, recording its time in `phase` when it succeeds.
async fn timed<T>(
    stats: &Stats,
    phase: Phase,
    step: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    let started = Instant::now();
    let done = step.await?;
    stats.record(phase, started.elapsed());
    Ok(done)
}

/// `GET url` and its body, following up to five redirects (a router in redirect mode).
async fn get(endpoint: &Endpoint, url: &str) -> Result<String, String> {
    let mut url = url.to_owned();
    for _ in 0..=5 {
        let response = (endpoint.http.get(&url).timeout(endpoint.step).send().await)
            .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
        let status = response.status();
        let location = (response.headers().get(http::header::LOCATION))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response.text().await;
        match location {
            Some(next) if status.is_redirection() => url = next,
            _ if status.is_success() => {
                return body.map_err(|e| format!("GET {url}: {}", error_chain(&e)));
            }
            _ => return Err(format!("GET {url} answered {status}")),
        }
    }
    Err(format!("GET {url}: more than five redirects"))
}

fn progress_bar(settings: &Settings, total: u64) -> indicatif::ProgressBar {
    if !settings.progress || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{elapsed_precise} [{bar:40}] {pos}/{len} participants in {msg}",
    ) {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_rates_read_as_operators_write_them() {
        assert_eq!(parse_rate("1/s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_rate("2"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_rate("30/min"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_rate("0"), Ok(Duration::ZERO));
        assert!(parse_rate("fast").unwrap_err().contains("--message-rate"));
        assert!(parse_rate("1/week").is_err());
        assert!(parse_rate("-1/s").is_err());
    }

    #[test]
    fn a_room_on_two_nodes_or_with_a_blind_participant_is_split() {
        let seen = |room, nick: &str, node: &str, occupants: &[&str]| Seen {
            room,
            nick: nick.into(),
            node: Some(node.into()),
            occupants: Some(occupants.iter().map(|s| s.to_string()).collect()),
        };
        let outcomes = rooms(
            3,
            vec![
                seen(0, "p0", "a", &["p0", "p1"]),
                seen(0, "p1", "a", &["p0", "p1"]),
                seen(1, "p0", "a", &["p0"]),
                seen(1, "p1", "b", &["p1"]),
                seen(2, "p0", "a", &["p0", "p1"]),
                seen(2, "p1", "a", &["p1"]),
            ],
        );
        let split: Vec<bool> = outcomes.iter().map(|r| r.split).collect();
        assert_eq!(split, [false, true, true]);
        assert_eq!(outcomes[1].nodes, ["a", "b"]);
    }
}
