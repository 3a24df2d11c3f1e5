//! What the nodes' room census does to the pins.
//!
//! A room a node's census reports live keeps its pin to that node alive, in proxy and redirect
//! mode alike: in redirect mode the router sees only each participant's first request, and a
//! meeting longer than `pin_idle_timeout` would otherwise lose its pin and a late joiner be
//! placed elsewhere. A room live on a node that this router holds no pin for is pinned to it
//! (adopted): after a restart without a snapshot, or on a new replica, the router learns where
//! the meetings already are. A census that fails keeps counting for three intervals with its
//! last good answer, then counts for nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::join_all;

use super::Router;
use crate::config::Census;
use crate::fleet::census::{self, CensusError, LiveRoom};
use crate::room::RoomLimits;

impl Router {
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
            let held = self.pin(&room.key, None, target.id.clone());
            if held.created {
                tracing::info!(room = %room.key, node, participants = room.participants, "room adopted from the node's census");
                adopted += 1;
            }
        }
        adopted
    }

    /// Polls the census of every node that names a `census_url`, every `cfg.interval`, and
    /// applies each answer. Runs until dropped.
    pub async fn run_census(
        self: Arc<Self>,
        client: reqwest::Client,
        cfg: Census,
        limits: RoomLimits,
    ) {
        let mut last_good: HashMap<String, (Instant, Vec<LiveRoom>)> = HashMap::new();
        let mut tick = tokio::time::interval(cfg.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let state = self.fleet.load();
            let polls = (state.nodes().iter()).filter_map(|node| {
                let url = node.spec.census_url.as_deref()?;
                let (client, limits) = (&client, &limits);
                Some(async move { (node, census::fetch(client, url, limits).await) })
            });
            for (node, answer) in join_all(polls).await {
                match answer {
                    Ok(rooms) => {
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
                        tracing::warn!(node = %node.id, url = node.spec.census_url.as_deref().unwrap_or_default(), error = %e, "census failed; its last good answer counts for three intervals");
                    }
                }
            }
            last_good.retain(|_, (at, _)| at.elapsed() <= cfg.kept_for());
            for node in state.nodes() {
                let rooms = last_good.get(node.id.as_str()).map(|(_, rooms)| rooms);
                let participants = rooms.map(|rooms| rooms.iter().map(|r| r.participants).sum());
                node.live.set_participants(participants);
                if let Some(rooms) = rooms {
                    self.apply_census(node.id.as_str(), rooms);
                }
            }
        }
    }
}
