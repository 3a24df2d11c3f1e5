//! What a bench run measured: latency per phase (HDR histograms, microsecond resolution),
//! errors by phase and kind, the nodes of each room and its splits; as a table or JSON.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{json, Value};

use super::domains::Domain;

/// The steps of a participant's visit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// `GET /<room>`.
    Page,
    /// `GET /config.js?room=`.
    Config,
    /// The signalling connection: WebSocket or BOSH session, SASL, bind.
    Connect,
    /// The MUC join, until the room reflects the participant's presence.
    Join,
    /// A groupchat message until the room reflects it back.
    Message,
    /// Leaving (errors only).
    Leave,
}

impl Phase {
    const TIMED: [Phase; 5] = [
        Phase::Page,
        Phase::Config,
        Phase::Connect,
        Phase::Join,
        Phase::Message,
    ];

    fn name(self) -> &'static str {
        match self {
            Phase::Page => "page",
            Phase::Config => "config",
            Phase::Connect => "connect",
            Phase::Join => "join",
            Phase::Message => "rtt",
            Phase::Leave => "leave",
        }
    }
}

/// Latencies and errors as participants report them.
#[derive(Debug, Default)]
pub struct Stats {
    latencies: Mutex<BTreeMap<Phase, Histogram<u64>>>,
    errors: Mutex<BTreeMap<(Phase, String), (u64, String)>>,
}

impl Stats {
    /// Records one step's time.
    pub fn record(&self, phase: Phase, took: Duration) {
        let Ok(mut latencies) = self.latencies.lock() else {
            return;
        };
        let histogram = latencies.entry(phase).or_insert_with(|| {
            Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
        });
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = histogram.record(micros.min(3_600_000_000));
    }

    /// Records a failed step: counted by phase and kind, the first message kept as an example.
    pub fn error(&self, phase: Phase, message: &str) {
        let Ok(mut errors) = self.errors.lock() else {
            return;
        };
        let entry = errors
            .entry((phase, kind(message)))
            .or_insert_with(|| (0, message.to_owned()));
        entry.0 += 1;
    }
}

/// A short kind for an error message: its words before the first detail.
fn kind(message: &str) -> String {
    let lower = message.to_lowercase();
    for (needle, kind) in [
        ("timed out", "timeout"),
        ("within", "timeout"),
        ("connection refused", "connection refused"),
        ("ended the stream", "stream error"),
        ("refused", "refused"),
        ("certificate", "tls"),
        ("tls", "tls"),
        ("error sending request", "connection failed"),
        ("answered", "http status"),
        ("closed", "closed"),
        ("terminate", "session ended"),
    ] {
        if lower.contains(needle) {
            return kind.into();
        }
    }
    "other".into()
}

/// One room's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct RoomOutcome {
    /// Its number in this run.
    pub room: usize,
    /// Participants sent to it.
    pub participants: usize,
    /// Those that joined.
    pub joined: usize,
    /// The nodes its participants' signalling reached.
    pub nodes: Vec<String>,
    /// On two nodes, or someone did not see someone else.
    pub split: bool,
}

/// Percentiles of one phase, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Percentiles {
    /// Steps measured.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |micros: u64| (micros as f64 / 10.0).round() / 100.0;
        Percentiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct Report {
    /// Participants started.
    pub participants: usize,
    /// Participants that joined their room.
    pub joined: usize,
    /// Failed steps in all.
    pub errors: u64,
    /// Failed steps by phase and kind, with an example message.
    pub errors_by_kind: Vec<(String, String, u64, String)>,
    /// Latency per phase (name → percentiles), for the phases that ran.
    pub phases: BTreeMap<&'static str, Percentiles>,
    /// Rooms.
    pub rooms: Vec<RoomOutcome>,
    /// How long the run took.
    pub elapsed: Duration,
    /// The XMPP and MUC domains it used.
    pub domains: [Domain; 2],
}

impl Report {
    /// The report of a run from its `stats` and rooms.
    pub fn new(
        stats: &Stats,
        participants: usize,
        rooms: Vec<RoomOutcome>,
        elapsed: Duration,
        domains: [Domain; 2],
    ) -> Report {
        let phases = (stats.latencies.lock())
            .map(|l| {
                l.iter()
                    .map(|(p, h)| (p.name(), Percentiles::of(h)))
                    .collect()
            })
            .unwrap_or_default();
        let errors_by_kind: Vec<(String, String, u64, String)> = (stats.errors.lock())
            .map(|e| {
                (e.iter())
                    .map(|((phase, kind), (n, example))| {
                        (phase.name().to_owned(), kind.clone(), *n, example.clone())
                    })
                    .collect()
            })
            .unwrap_or_default();
        Report {
            participants,
            joined: rooms.iter().map(|r| r.joined).sum(),
            errors: errors_by_kind.iter().map(|e| e.2).sum(),
            errors_by_kind,
            phases,
            rooms,
            elapsed,
            domains,
        }
    }

    /// Rooms that split.
    pub fn splits(&self) -> usize {
        self.rooms.iter().filter(|r| r.split).count()
    }

    /// Zero splits and zero errors.
    pub fn passed(&self) -> bool {
        self.splits() == 0 && self.errors == 0
    }

    /// The report as one JSON object; with `direct`, the same against a node and the router's
    /// added latency per phase.
    pub fn json(&self, direct: Option<&Report>) -> Value {
        let phase = |name: &str| self.phases.get(name).map(|p| json!(p));
        let mut nodes: BTreeMap<&str, usize> = BTreeMap::new();
        for room in &self.rooms {
            for node in &room.nodes {
                *nodes.entry(node.as_str()).or_default() += 1;
            }
        }
        let mut out = json!({
            "participants": self.participants,
            "joined": self.joined,
            "errors": self.errors,
            "splits": self.splits(),
            "page_ms": phase("page"),
            "config_ms": phase("config"),
            "connect_ms": phase("connect"),
            "join_ms": phase("join"),
            "rtt_ms": phase("rtt"),
            "errors_by_kind": self.errors_by_kind.iter().map(|(phase, kind, count, example)| {
                json!({"phase": phase, "kind": kind, "count": count, "example": example})
            }).collect::<Vec<_>>(),
            "rooms_per_node": nodes,
            "split_rooms": self.rooms.iter().filter(|r| r.split).collect::<Vec<_>>(),
            "elapsed_s": self.elapsed.as_secs_f64(),
            "xmpp_domain": self.domains[0],
            "muc_domain": self.domains[1],
        });
        if let Some(direct) = direct {
            out["direct"] = direct.json(None);
            out["added_ms"] = json!(self.added(direct));
        }
        out
    }

    /// The router's added latency per phase: this run minus `direct`'s, percentile by percentile.
    pub fn added(&self, direct: &Report) -> BTreeMap<&'static str, Percentiles> {
        let round = |x: f64| (x * 100.0).round() / 100.0;
        (self.phases.iter())
            .filter_map(|(name, through)| {
                let d = direct.phases.get(name)?;
                Some((
                    *name,
                    Percentiles {
                        count: through.count,
                        p50: round(through.p50 - d.p50),
                        p90: round(through.p90 - d.p90),
                        p99: round(through.p99 - d.p99),
                        max: round(through.max - d.max),
                    },
                ))
            })
            .collect()
    }

    /// A table for people.
    pub fn table(&self, direct: Option<&Report>) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "participants {} joined {} errors {} splits {} ({} rooms, {:.1} s)",
            self.participants,
            self.joined,
            self.errors,
            self.splits(),
            self.rooms.len(),
            self.elapsed.as_secs_f64()
        );
        let [xmpp, muc] = &self.domains;
        let _ = writeln!(
            out,
            "XMPP domain {} ({}), MUC domain {} ({})",
            xmpp.name, xmpp.from, muc.name, muc.from
        );
        self.write_phases(&mut out, direct);
        self.write_errors(&mut out);
        self.write_rooms(&mut out);
        out
    }

    /// Each phase's times, and what the router added to them when measured against `direct`.
    fn write_phases(&self, out: &mut String, direct: Option<&Report>) {
        let _ = writeln!(
            out,
            "\n{:<9} {:>7} {:>9} {:>9} {:>9} {:>9}",
            "phase", "count", "p50 ms", "p90 ms", "p99 ms", "max ms"
        );
        let added = direct.map(|d| self.added(d));
        for phase in Phase::TIMED {
            let Some(p) = self.phases.get(phase.name()) else {
                continue;
            };
            let _ = writeln!(
                out,
                "{:<9} {:>7} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                phase.name(),
                p.count,
                p.p50,
                p.p90,
                p.p99,
                p.max
            );
            if let Some(a) = added.as_ref().and_then(|a| a.get(phase.name())) {
                let _ = writeln!(
                    out,
                    "{:<9} {:>7} {:>+9.2} {:>+9.2} {:>+9.2} {:>+9.2}",
                    "  added", "", a.p50, a.p90, a.p99, a.max
                );
            }
        }
    }

    /// The errors by phase and kind, with an example of each.
    fn write_errors(&self, out: &mut String) {
        if !self.errors_by_kind.is_empty() {
            let _ = writeln!(out, "\nerrors:");
            for (phase, kind, count, example) in &self.errors_by_kind {
                let _ = writeln!(out, "  {phase:<8} {kind:<20} {count:>6}  e.g. {example}");
            }
            if self
                .errors_by_kind
                .iter()
                .any(|(_, kind, ..)| kind == "tls")
            {
                let _ = writeln!(
                    out,
                    "  (a certificate this machine does not trust: name its CA with --ca FILE, or use --insecure on a test deployment)"
                );
            }
        }
    }

    /// Rooms per node, and every room found split.
    fn write_rooms(&self, out: &mut String) {
        let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
        for node in self.rooms.iter().flat_map(|r| &r.nodes) {
            *per_node.entry(node).or_default() += 1;
        }
        if !per_node.is_empty() {
            let nodes: Vec<String> = per_node.iter().map(|(n, c)| format!("{n} {c}")).collect();
            let _ = writeln!(
                out,
                "\nrooms per node (X-Jitsi-Shard): {}",
                nodes.join(", ")
            );
        }
        for room in self.rooms.iter().filter(|r| r.split) {
            let _ = writeln!(
                out,
                "SPLIT room {}: {} of {} joined, on {}",
                room.room,
                room.joined,
                room.participants,
                if room.nodes.is_empty() {
                    "unknown nodes".into()
                } else {
                    room.nodes.join(" and ")
                }
            );
        }
    }
}
