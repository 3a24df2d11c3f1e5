//! Routing decisions: which node serves a room, a bridge channel, or a request with no room.
//!
//! ```text
//! room key ──► pin table ──hit──► node (still in the fleet?) ──yes──► Pinned
//!                 │miss                      │no
//!                 ▼                          ▼
//!           policy::choose ──► pin_if_absent / repin ──► Placed / Replaced
//! ```
//! Nothing here knows hyper: the proxy hands in a [`RoomKey`] and gets a node back.

pub(crate) mod pin_index;
pub mod pins;
pub mod policy;
pub mod rendezvous;
pub mod shared;
pub mod shortlist;
pub mod snapshot;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use crate::fleet::{Fleet, FleetState, Node, NodeId};
use crate::room::RoomKey;
use pins::{PinStore, Pinned};
pub use policy::Settings;
use shared::SharedPins;

/// How a room's node was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The room was already pinned to a node that is still in the fleet.
    Pinned,
    /// First visit: the room was placed (or another request placed it a moment earlier).
    Placed,
    /// The room's node left the fleet; the room moved.
    Replaced {
        /// The node it was pinned to.
        from: NodeId,
    },
    /// First visit here, but another router replica had placed the room: its pin from the
    /// shared store was taken (see [`shared`]).
    Shared,
}

impl Decision {
    /// What a pin change means: a pin made in place of a stale one (`moved`) is a re-placement,
    /// one made for a room this router placed (`placed_here`) a placement, one made for a room
    /// another replica placed a shared one, and no pin made (it existed) a pinned room.
    fn of(held: &Pinned, moved: bool, placed_here: bool) -> Decision {
        match held.displaced.clone() {
            Some(from) if held.created && moved => Decision::Replaced { from },
            _ if held.created && placed_here => Decision::Placed,
            _ if held.created => Decision::Shared,
            _ => Decision::Pinned,
        }
    }
}

/// A room's node and how it was chosen, owned (see [`Router::route_room`]).
pub struct Routed {
    node: Arc<Node>,
    /// How it was chosen.
    pub decision: Decision,
}

impl Routed {
    /// The node.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }
}

impl std::fmt::Debug for Routed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routed")
            .field("node", &self.node().id)
            .field("decision", &self.decision)
            .finish()
    }
}

/// An event for observers (the demo's console, later the admin API): a room got a node.
#[derive(Debug, Clone)]
pub struct PinEvent {
    /// The room.
    pub room: String,
    /// Its node.
    pub node: NodeId,
    /// The node it left, for a re-placement.
    pub from: Option<NodeId>,
}

/// How often the "every node is over max_cpu" warning may repeat.
const OVERLOAD_WARNING_EVERY: Duration = Duration::from_secs(10);

/// The routing core: fleet state plus pin table.
pub struct Router {
    fleet: Arc<Fleet>,
    pins: Arc<dyn PinStore>,
    settings: Settings,
    events: broadcast::Sender<PinEvent>,
    /// Set once anyone subscribes: until then placements skip the channel, whose every call
    /// (even counting receivers) takes its one mutex.
    listened: std::sync::atomic::AtomicBool,
    epoch: Instant,
    over_max_cpu: AtomicU64,
    last_overload_warning_ms: AtomicU64,
    shared: OnceLock<Arc<SharedPins>>,
}

/// What a router with a shared pin store does with a room before it asks the store.
#[derive(Debug)]
pub enum Proposal {
    /// This router holds a pin on a node that may keep the room: no need to ask.
    Held(Arc<Node>),
    /// The node placement chooses now, and the node of this router's stale pin, if any.
    New {
        /// The chosen node; `None` when no node here can take a new room (the store may still
        /// hold the room on a node that keeps its rooms, a draining one).
        node: Option<NodeId>,
        /// The node this router's pin points to that may no longer keep the room.
        stale: Option<NodeId>,
    },
}

impl Router {
    /// A router over this fleet and pin table, placing new rooms by `settings`.
    pub fn new(fleet: Arc<Fleet>, pins: Arc<dyn PinStore>, settings: Settings) -> Router {
        Router {
            fleet,
            pins,
            settings,
            events: broadcast::channel(1024).0,
            listened: std::sync::atomic::AtomicBool::new(false),
            epoch: Instant::now(),
            over_max_cpu: AtomicU64::new(0),
            last_overload_warning_ms: AtomicU64::new(0),
            shared: OnceLock::new(),
        }
    }

    /// The placement settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Rooms placed while every candidate was at or above `max_cpu`.
    pub fn placed_over_max_cpu(&self) -> u64 {
        self.over_max_cpu.load(Ordering::Relaxed)
    }

    /// The fleet this router reads.
    pub fn fleet(&self) -> &Arc<Fleet> {
        &self.fleet
    }

    /// The pin table.
    pub fn pins(&self) -> &Arc<dyn PinStore> {
        &self.pins
    }

    /// Pin and re-pin events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<PinEvent> {
        self.listened.store(true, Ordering::Relaxed);
        self.events.subscribe()
    }

    /// The node for a room; `None` when no node can take it.
    ///
    /// A pinned room stays on its node while that node is in the fleet and healthy (draining
    /// nodes keep their rooms); otherwise the room is placed again and stays where it lands.
    pub fn route_room(&self, key: &RoomKey<'_>) -> Option<Routed> {
        self.route_room_with(key, |node, decision| Routed {
            node: node.clone(),
            decision,
        })
    }

    /// Like [`route_room`](Self::route_room), but hands the node to `f` in place, and reads the
    /// fleet state through the thread's cache of it ([`Fleet::with_state`]): a pinned room's
    /// decision then takes no atomic read-modify-write at all (a guard on the state takes two,
    /// each a full barrier on x86) and bumps no reference count shared by every room of its
    /// node. The request path's call; what `f` keeps of the node it clones.
    pub fn route_room_with<R>(
        &self,
        key: &RoomKey<'_>,
        f: impl FnOnce(&Arc<Node>, Decision) -> R,
    ) -> Option<R> {
        self.fleet.with_state(|state| self.decide(state, key, f))
    }

    fn decide<R>(
        &self,
        state: &FleetState,
        key: &RoomKey<'_>,
        f: impl FnOnce(&Arc<Node>, Decision) -> R,
    ) -> Option<R> {
        let room = key.as_str();
        let stale = match self.held(state, room) {
            Some(Ok(index)) => return Some(f(&state.nodes()[index], Decision::Pinned)),
            Some(Err(id)) => Some(id),
            None => None,
        };
        let chosen = self.place(state, room)?;
        let (held, index) = self.pin_chosen(state, room, stale.as_ref(), chosen);
        // A concurrent request may have pinned a node this (older) state does not know; use the
        // newest state to resolve it, and if even that lacks it, the pin is stale: move it.
        let newer;
        let (state, index) = match index {
            Some(index) => (state, index),
            None => {
                let (state, index) = self.resolve_unknown(room, &held)?;
                newer = state;
                (&**newer, index)
            }
        };
        let decision = Decision::of(&held, stale.is_some(), true);
        if held.created {
            self.announce(room, &state.nodes()[index].id, &decision);
        }
        Some(f(&state.nodes()[index], decision))
    }

    /// The room's pin in this router's table: `Ok` with its node's index in `state` when that
    /// node may keep it (in the fleet and healthy; draining nodes keep their rooms), `Err` with
    /// the node when it may not, `None` when the room is not pinned.
    fn held(&self, state: &FleetState, room: &str) -> Option<Result<usize, NodeId>> {
        let mut pinned = None;
        self.pins.lookup_with(room, &mut |id, hint| {
            let index = hint
                .get()
                .filter(|&at| {
                    let node = state.nodes().get(at);
                    node.is_some_and(|node| node.id.same(id) || node.id == *id)
                })
                .or_else(|| {
                    let index = state.index(id.as_str())?;
                    hint.set(index);
                    Some(index)
                });
            pinned = Some(match index {
                Some(index) if state.slots()[index].load().healthy() => Ok(index),
                _ => Err(id.clone()),
            });
        });
        pinned
    }

    /// The index of the node chosen for a new room.
    fn place(&self, state: &FleetState, room: &str) -> Option<usize> {
        let now = Instant::now();
        let chosen = policy::choose(
            state,
            &self.settings,
            rendezvous::seed(room.as_bytes()),
            now,
        )?;
        if chosen.over_max_cpu {
            self.warn_overloaded(now);
        }
        Some(chosen.index)
    }

    fn warn_overloaded(&self, now: Instant) {
        self.over_max_cpu.fetch_add(1, Ordering::Relaxed);
        let now_ms = u64::try_from(now.duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX);
        let last = self.last_overload_warning_ms.load(Ordering::Relaxed);
        let due =
            last == 0 || now_ms.saturating_sub(last) >= OVERLOAD_WARNING_EVERY.as_millis() as u64;
        if due
            && self
                .last_overload_warning_ms
                .compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                max_cpu = self.settings.max_cpu,
                rooms_so_far = self.placed_over_max_cpu(),
                "every available node is over max_cpu; placing on the least busy anyway"
            );
        }
    }

    /// Keeps the per-node room counts in step with a pin change: a pin this call made counts
    /// into its node (at `index` in `state` when known there) and out of the node it displaced.
    fn count(&self, state: &FleetState, index: Option<usize>, held: &Pinned) {
        if !held.created {
            return;
        }
        let live = match index {
            Some(index) => Some(&state.nodes()[index].live),
            None => state.live(held.node.as_str()),
        };
        if let Some(live) = live {
            live.room_placed();
        }
        if let Some(live) = held
            .displaced
            .as_ref()
            .and_then(|old| state.live(old.as_str()))
        {
            live.room_left();
        }
    }

    fn resolve_unknown(
        &self,
        room: &str,
        held: &Pinned,
    ) -> Option<(arc_swap::Guard<Arc<FleetState>>, usize)> {
        let state = self.fleet.load();
        if let Some(index) = state.index(held.node.as_str()) {
            return Some((state, index));
        }
        let chosen = self.place(&state, room)?;
        let (_, index) = self.pin_chosen(&state, room, Some(&held.node), chosen);
        Some((state, index?))
    }

    /// Pins the room to the node at `chosen` (moving it from `stale`, if given), counts the
    /// change, and returns the pin that holds with its node's index in `state` (`None` when a
    /// concurrent request pinned a node this state does not know).
    fn pin_chosen(
        &self,
        state: &FleetState,
        room: &str,
        stale: Option<&NodeId>,
        chosen: usize,
    ) -> (Pinned, Option<usize>) {
        let chosen_id = &state.nodes()[chosen].id;
        let held = match stale {
            Some(old) => self.pins.repin(room, old, chosen_id.clone()),
            None => self.pins.pin_if_absent(room, chosen_id.clone()),
        };
        // The chosen node holds the room unless a concurrent request pinned it first.
        let index = if held.node.same(chosen_id) {
            Some(chosen)
        } else {
            state.index(held.node.as_str())
        };
        self.count(state, index, &held);
        (held, index)
    }

    /// Forgets idle pins and counts their rooms out of their nodes; returns how many.
    pub fn sweep(&self) -> usize {
        let state = self.fleet.load();
        self.pins.sweep(&mut |node| {
            if let Some(live) = state.live(node.as_str()) {
                live.room_left();
            }
        })
    }

    /// Pins a room to a named node whatever it was (operators fixing a room by hand); returns the
    /// node it left, if any. `None` from the outer option: no such node.
    pub fn move_room(&self, room: &str, node: &str) -> Option<Option<NodeId>> {
        let old = self.set_pin(room, node)?;
        tracing::info!(room, node, from = ?old.as_ref().map(NodeId::as_str), "room moved by operator");
        Some(old)
    }

    fn set_pin(&self, room: &str, node: &str) -> Option<Option<NodeId>> {
        let state = self.fleet.load();
        let target = state.node(node)?;
        let old = self.pins.set(room, target.id.clone());
        target.live.room_placed();
        if let Some(live) = old.as_ref().and_then(|o| state.live(o.as_str())) {
            live.room_left();
        }
        Some(old)
    }

    /// With a shared pin store: the room's node when this router holds a pin on a node that may
    /// keep it, handed to `f` in place as [`route_room_with`](Self::route_room_with) does; `None`
    /// when the store must be asked (no pin here, or a stale one).
    pub fn route_held_with<R>(
        &self,
        key: &RoomKey<'_>,
        f: impl FnOnce(&Arc<Node>) -> R,
    ) -> Option<R> {
        self.fleet
            .with_state(|state| match self.held(state, key.as_str()) {
                Some(Ok(index)) => Some(f(&state.nodes()[index])),
                _ => None,
            })
    }

    /// Shares this router's pins with other replicas through `shared` from now on.
    pub fn share_pins(&self, shared: Arc<SharedPins>) {
        let _set_once = self.shared.set(shared);
    }

    /// The shared pin store, when there is one.
    pub fn shared_pins(&self) -> Option<&Arc<SharedPins>> {
        self.shared.get()
    }

    /// For a shared pin store: a pin this router holds on a node that may keep the room, or
    /// else the node placement would choose now (nothing is pinned here yet).
    pub fn propose(&self, room: &str) -> Proposal {
        let state = self.fleet.load();
        let stale = match self.held(&state, room) {
            Some(Ok(index)) => return Proposal::Held(state.nodes()[index].clone()),
            Some(Err(id)) => Some(id),
            None => None,
        };
        Proposal::New {
            node: self
                .place(&state, room)
                .map(|chosen| state.nodes()[chosen].id.clone()),
            stale,
        }
    }

    /// Whether a node named `node` may hold rooms here (in the fleet and healthy; draining
    /// nodes keep the rooms they have).
    pub fn usable(&self, node: &str) -> bool {
        self.fleet
            .load()
            .node(node)
            .is_some_and(|node| node.live.healthy())
    }

    /// Pins the room here to the node the shared store holds it on (moving it from `stale`, this
    /// router's pin to a node that may not keep it). `placed_here`: this router's proposal is
    /// what the store took. `None` when the node left the fleet meanwhile.
    pub fn adopt(
        &self,
        room: &str,
        node: &str,
        stale: Option<&NodeId>,
        placed_here: bool,
    ) -> Option<(Arc<Node>, Decision)> {
        let state = self.fleet.load();
        let chosen = state.index(node)?;
        let id = state.nodes()[chosen].id.clone();
        let held = match stale {
            Some(old) => self.pins.repin(room, old, id),
            None => self.pins.pin_if_absent(room, id),
        };
        // A request racing this one may have pinned the room here first: its pin holds.
        let index = if held.node.as_str() == node {
            chosen
        } else {
            state.index(held.node.as_str())?
        };
        self.count(&state, Some(index), &held);
        let decision = Decision::of(&held, stale.is_some(), placed_here);
        match decision {
            Decision::Placed | Decision::Replaced { .. } => {
                self.announce(room, &held.node, &decision)
            }
            Decision::Shared => {
                tracing::debug!(room, node, "room pinned as another replica pinned it")
            }
            Decision::Pinned => {}
        }
        Some((state.nodes()[index].clone(), decision))
    }

    /// The shared store holds the room on another node than this router's pin (another replica
    /// moved it): follow it. False when that node is not usable here.
    pub fn follow(&self, room: &str, node: &str) -> bool {
        if !self.usable(node) {
            return false;
        }
        match self.set_pin(room, node) {
            Some(old) => {
                tracing::info!(room, node, from = ?old.as_ref().map(NodeId::as_str), "room moved by another replica");
                true
            }
            None => false,
        }
    }

    /// Unpins a room (operators); its node counts it out.
    pub fn unpin(&self, room: &str) -> Option<NodeId> {
        let node = self.pins.unpin(room)?;
        if let Some(live) = self.fleet.load().live(node.as_str()) {
            live.room_left();
        }
        Some(node)
    }

    fn announce(&self, room: &str, node: &NodeId, decision: &Decision) {
        let from = match decision {
            Decision::Replaced { from } => Some(from.clone()),
            _ => None,
        };
        match &from {
            Some(old) => tracing::info!(room, node = %node, from = %old, "room re-placed"),
            None => tracing::info!(room, node = %node, "room pinned"),
        }
        if self.listened.load(Ordering::Relaxed) && self.events.receiver_count() > 0 {
            let _a_listener_may_just_have_gone = self.events.send(PinEvent {
                room: room.to_owned(),
                node: node.clone(),
                from,
            });
        }
    }

    /// The node that declared a videobridge server id.
    pub fn route_bridge(&self, server_id: &str) -> Option<Arc<Node>> {
        self.fleet.load().node_for_server_id(server_id).cloned()
    }

    /// A node for a request without a room: the named node if it exists and is healthy
    /// (affinity cookie), else the least-loaded node, ties spread by `spread` (a hash of the client).
    pub fn route_unrouted(&self, preferred: Option<&str>, spread: u64) -> Option<Arc<Node>> {
        let state = self.fleet.load();
        if let Some(node) = preferred.and_then(|name| state.node(name)) {
            if node.live.healthy() {
                return Some(node.clone());
            }
        }
        let chosen = policy::choose(&state, &self.settings, spread, Instant::now())?;
        Some(state.nodes()[chosen.index].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeSpec;
    use crate::room::RoomLimits;

    fn specs(names: &[&str]) -> Vec<NodeSpec> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| NodeSpec::new(n, &format!("http://10.0.0.{i}:80")).unwrap())
            .collect()
    }

    fn router(names: &[&str]) -> Router {
        let fleet = Arc::new(Fleet::new(specs(names), Duration::from_secs(90)));
        Router::new(
            fleet,
            Arc::new(pins::MemoryPins::new(Duration::from_secs(600))),
            Settings::default(),
        )
    }

    fn key(text: &str) -> RoomKey<'static> {
        RoomKey::parse(text, &RoomLimits::default()).unwrap()
    }

    #[test]
    fn a_room_stays_on_its_node() {
        let router = router(&["a", "b", "c"]);
        let first = router.route_room(&key("standup")).unwrap();
        assert_eq!(first.decision, Decision::Placed);
        for _ in 0..100 {
            let again = router.route_room(&key("standup")).unwrap();
            assert_eq!(
                (again.node().id.clone(), again.decision),
                (first.node().id.clone(), Decision::Pinned)
            );
        }
    }

    #[test]
    fn adding_a_node_moves_no_pinned_room() {
        let router = router(&["a", "b"]);
        let before: Vec<_> = (0..200)
            .map(|i| {
                router
                    .route_room(&key(&format!("r{i}")))
                    .unwrap()
                    .node()
                    .id
                    .clone()
            })
            .collect();
        router.fleet().set_nodes(specs(&["a", "b", "c"]));
        for (i, node) in before.iter().enumerate() {
            assert_eq!(
                &router.route_room(&key(&format!("r{i}"))).unwrap().node().id,
                node
            );
        }
    }

    #[test]
    fn reordered_nodes_keep_their_rooms() {
        let router = router(&["a", "b", "c"]);
        let rooms: Vec<_> = (0..60).map(|i| key(&format!("r{i}"))).collect();
        let before: Vec<NodeId> = (rooms.iter())
            .map(|room| router.route_room(room).unwrap().node().id.clone())
            .collect();
        // Pinned requests leave each pin's index hint at its node's place in this order.
        for (room, node) in rooms.iter().zip(&before) {
            assert_eq!(&router.route_room(room).unwrap().node().id, node);
        }
        // Now "a" stands where "c" stood: every stale hint must be caught.
        router.fleet().set_nodes(specs(&["c", "b", "a"]));
        for _ in 0..2 {
            for (room, node) in rooms.iter().zip(&before) {
                let routed = router.route_room(room).unwrap();
                assert_eq!(
                    (&routed.node().id, routed.decision.clone()),
                    (node, Decision::Pinned)
                );
            }
        }
        let rooms_on = |name: &str| before.iter().filter(|n| n.as_str() == name).count();
        assert!(rooms_on("a") > 0 && rooms_on("c") > 0, "{before:?}");
    }

    #[test]
    fn a_removed_node_s_rooms_are_replaced() {
        let router = router(&["a", "b"]);
        let rooms: Vec<_> = (0..50).map(|i| key(&format!("r{i}"))).collect();
        for room in &rooms {
            router.route_room(room);
        }
        router.fleet().set_nodes(specs(&["a"]));
        for room in &rooms {
            let routed = router.route_room(room).unwrap();
            assert_eq!(routed.node().id.as_str(), "a");
            assert!(matches!(
                routed.decision,
                Decision::Pinned | Decision::Replaced { .. }
            ));
        }
    }

    #[test]
    fn draining_keeps_rooms_and_takes_no_new_ones() {
        let router = router(&["a", "b", "c"]);
        let rooms: Vec<_> = (0..60).map(|i| key(&format!("r{i}"))).collect();
        let before: Vec<_> = rooms
            .iter()
            .map(|r| router.route_room(r).unwrap().node().id.clone())
            .collect();
        assert!(before.iter().any(|n| n.as_str() == "b"));
        assert_eq!(router.fleet().set_draining("b", true), Some(false));
        for (room, node) in rooms.iter().zip(&before) {
            let again = router.route_room(room).unwrap();
            assert_eq!(
                (&again.node().id, again.decision.clone()),
                (node, Decision::Pinned)
            );
        }
        for i in 0..60 {
            let fresh = router.route_room(&key(&format!("new{i}"))).unwrap();
            assert_ne!(fresh.node().id.as_str(), "b");
        }
        router.fleet().set_draining("b", false);
        let taken = (0..60).filter(|i| {
            router
                .route_room(&key(&format!("later{i}")))
                .unwrap()
                .node()
                .id
                .as_str()
                == "b"
        });
        assert!(taken.count() > 0, "undrained node takes rooms again");
        assert_eq!(router.fleet().set_draining("zzz", true), None);
    }

    #[test]
    fn room_counts_follow_pins() {
        let router = router(&["a", "b"]);
        for i in 0..40 {
            router.route_room(&key(&format!("r{i}")));
        }
        let state = router.fleet().snapshot();
        let total: u32 = state.nodes().iter().map(|n| n.live.rooms()).sum();
        assert_eq!(total, 40);
        router.fleet().set_nodes(specs(&["a"]));
        for i in 0..40 {
            router.route_room(&key(&format!("r{i}")));
        }
        let state = router.fleet().snapshot();
        assert_eq!(state.node("a").unwrap().live.rooms(), 40);
        assert_eq!(
            state.live("b").unwrap().rooms(),
            0,
            "moved rooms are counted out of the old node"
        );
        router.unpin("r0");
        assert_eq!(state.node("a").unwrap().live.rooms(), 39);
    }

    #[test]
    fn empty_fleet_routes_nothing() {
        let router = router(&[]);
        assert!(router.route_room(&key("x")).is_none());
        assert!(router.route_unrouted(None, 7).is_none());
    }

    #[test]
    fn unrouted_prefers_the_cookie_node() {
        let router = router(&["a", "b", "c"]);
        assert_eq!(
            router.route_unrouted(Some("b"), 1).unwrap().id.as_str(),
            "b"
        );
        assert!(router.route_unrouted(Some("gone"), 1).is_some());
    }
}
