//! What the nodes' room census does to the pins.
//!
//! A room a node's census reports live keeps its pin to that node alive, in proxy and redirect
//! mode alike: in redirect mode the router sees only each participant's first request, and a
//! meeting longer than `pin_idle_timeout` would otherwise lose its pin and a late joiner be
//! placed elsewhere. A room live on a node that this router holds no pin for is pinned to it
//! (adopted): after a restart without a snapshot, or on a new replica, the router learns where
//! the meetings already are. A census that fails keeps counting for three intervals with its
//! last good answer, then counts for nothing.
//!
//! A room live on two or more nodes at once is split: its participants sit in two conferences
//! of one name (after an operator moved it, a Redis outage between replicas, or a restart
//! without a snapshot). Each split is logged once, listed by [`Router::splits`] (the admin
//! API's `/api/splits`), and its pin follows the part with the most participants, so new
//! participants join the larger part.
//!
//! A draining node whose census and pins both say it hosts nothing is drained and empty: the
//! admin API shows since when, a gauge says so, and the moment is logged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::join_all;

use super::Router;
use crate::fleet::census::{self, CensusError, LiveRoom, Split};
use crate::fleet::Node;
use crate::room::RoomLimits;
use crate::rounds::Rounds;
use crate::throttle::Throttle;

/// Notes whether `node` is draining with no live room, so that an operator's upgrade script or
/// an autoscaler knows it may stop it, and logs the moment it becomes so. Its pins must agree:
/// none left (an idle pin expires after `pin_idle_timeout`). A node with a `census_url` must
/// also have a census that counts and lists no room; one without is judged by its pins alone.
fn judge_drained(node: &Node, census: Option<&[LiveRoom]>) {
    let census_empty = match census {
        Some(rooms) => rooms.is_empty(),
        None => node.spec.census_url.is_none(),
    };
    let empty = node.live.draining() && node.live.rooms() == 0 && census_empty;
    if node.live.set_drained_empty(empty) {
        tracing::info!(node = %node.id, "node drained and empty: it hosts no conference and may be stopped");
    }
}

/// How often a node's failing census is logged again while it keeps failing (the failures are
/// counted in `jitsi_router_census_failures_total` every time).
const CENSUS_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl Router {
    /// The rooms the last census round found live on more than one node.
    pub fn splits(&self) -> Vec<Split> {
        (self.splits.lock()).map_or_else(|_| Vec::new(), |splits| splits.clone())
    }

    /// Takes the splits of a census round: logs the new ones, and points each split room's pin
    /// at its part with the most participants (a pin already on one of the largest parts stays).
    /// Returns the rooms whose pin moved, with their node.
    fn settle_splits(&self, splits: Vec<Split>) -> Vec<(String, String)> {
        let mut moved = Vec::new();
        let before = match self.splits.lock() {
            Ok(mut known) => std::mem::replace(&mut *known, splits.clone()),
            Err(_) => return moved,
        };
        for split in &splits {
            let parts: Vec<String> = (split.nodes.iter())
                .map(|p| format!("{} ({})", p.node, p.participants))
                .collect();
            if !before.iter().any(|known| known.room == split.room) {
                tracing::warn!(room = %split.room, nodes = %parts.join(", "), "room split over nodes: new participants go to its largest part");
            }
            let most = split.nodes[0].participants;
            let largest = split.nodes.iter().take_while(|p| p.participants == most);
            let pinned = self.pins.info(&split.room).map(|pin| pin.node);
            if largest
                .clone()
                .any(|p| pinned.as_ref().is_some_and(|n| n.as_str() == p.node))
            {
                continue;
            }
            let Some(target) = largest.map(|p| p.node.as_str()).find(|n| self.usable(n)) else {
                continue;
            };
            if self.set_pin(&split.room, target).is_some() {
                tracing::info!(room = %split.room, node = target, "split room's pin follows its largest part");
                moved.push((split.room.clone(), target.to_owned()));
            }
        }
        moved
    }

    /// Applies one node's census: refreshes the pins of its live rooms that point at it, and
    /// pins to it the live rooms this router has no pin for. Returns how many were adopted.
    pub fn apply_census(&self, node: &str, rooms: &[LiveRoom]) -> usize {
        let state = self.fleet.load();
        let Some(target) = state.node(node) else {
            return 0;
        };
        let mut adopted = 0;
        for room in rooms {
            if self.pins.keep(&room.key, &target.id).is_some() || self.pins.full() {
                continue;
            }
            let held = self.pin(&state, &room.key, None, target.id.clone());
            if held.created {
                tracing::info!(room = %room.key, node, participants = room.participants, "room adopted from the node's census");
                adopted += 1;
            }
        }
        adopted
    }

    /// Polls the census of every node that names a `census_url`, every `[census] interval`
    /// (when a reload changes it, a round starts at once), and applies each answer. Runs until
    /// dropped.
    pub async fn run_census(self: Arc<Self>, client: reqwest::Client, limits: RoomLimits) {
        let mut last_good: LastGood = HashMap::new();
        // Nodes whose census fails: when that was last logged, and failures since.
        let mut failing: HashMap<String, Throttle> = HashMap::new();
        let mut rounds = Rounds::new(self.census.subscribe(), |cfg| cfg.interval);
        loop {
            let cfg = rounds.next().await;
            let state = self.fleet.load();
            let polls = (state.nodes().iter()).filter_map(|node| {
                let url = node.spec.census_url.as_deref()?;
                let (client, limits, timeout) = (&client, &limits, cfg.timeout());
                Some(async move { (node, census::fetch(client, url, timeout, limits).await) })
            });
            for (node, answer) in join_all(polls).await {
                record(node, answer, &mut last_good, &mut failing);
            }
            last_good.retain(|_, (at, _)| at.elapsed() <= cfg.kept_for());
            let counting: Vec<(&Node, &[LiveRoom])> = (state.nodes().iter())
                .filter_map(|node| {
                    let (_, rooms) = last_good.get(node.id.as_str())?;
                    Some((node.as_ref(), rooms.as_slice()))
                })
                .collect();
            let moved = self.settle_splits(census::splits(&counting));
            // Other replicas follow the store on their next sync, as for an operator's move.
            if let Some(shared) = self.shared.get() {
                for (room, node) in &moved {
                    if let Err(e) = shared.moved(room, node).await {
                        shared.failed(&e);
                    }
                }
            }
            for node in state.nodes() {
                let rooms = last_good.get(node.id.as_str()).map(|(_, rooms)| rooms);
                let participants = rooms.map(|rooms| {
                    (rooms.iter()).fold(0u32, |sum, room| sum.saturating_add(room.participants))
                });
                node.live.set_participants(participants);
                if let Some(rooms) = rooms {
                    self.apply_census(node.id.as_str(), rooms);
                }
                judge_drained(node, rooms.map(Vec::as_slice));
            }
        }
    }
}

/// Each node's last good census answer and when it came, by node name.
type LastGood = HashMap<String, (Instant, Vec<LiveRoom>)>;

/// Keeps a node's census answer as its last good one, or counts and logs its failure (a
/// failure of the router's own is neither: the last good answer still counts). `failing`
/// holds the nodes whose census fails, each with when that was last logged.
fn record(
    node: &Node,
    answer: Result<Vec<LiveRoom>, CensusError>,
    last_good: &mut LastGood,
    failing: &mut HashMap<String, Throttle>,
) {
    match answer {
        Ok(rooms) => {
            if failing.remove(node.id.as_str()).is_some() {
                tracing::info!(node = %node.id, "census answers again");
            }
            last_good.insert(node.id.as_str().to_owned(), (Instant::now(), rooms));
        }
        Err(CensusError::Local(fault)) => {
            tracing::warn!(node = %node.id, reason = %fault, "census not asked; its last answer still counts");
        }
        Err(e) => {
            node.live
                .report
                .census_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Logged when a node starts failing, then at most once a minute.
            let warned = (failing.entry(node.id.as_str().to_owned()))
                .or_insert_with(|| Throttle::new(CENSUS_LOG_EVERY));
            if let Some(failures) = warned.due() {
                tracing::warn!(node = %node.id, url = node.spec.census_url.as_deref().unwrap_or_default(), error = %e, failures, "census failed; its last good answer counts for three intervals");
            }
        }
    }
}
