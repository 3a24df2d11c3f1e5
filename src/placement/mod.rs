//! Routing decisions: which node serves a room, a bridge channel, or a request with no room.
//!
//! ```text
//! room key ──► pin table ──hit──► node (in the fleet, healthy?) ──yes──► Pinned
//!                 │miss                      │no
//!                 ▼                          ▼
//!      [pins.redis]? ask the shared store ─► policy::choose ─► pin ─► Placed / Replaced / Shared
//! ```
//! [`Router::route`] is the one entry point for a room: the proxy hands in a [`RoomKey`] and
//! gets a node and a [`Decision`] back; whether the shared store was asked stays in here.
//! Nothing here knows hyper.

pub mod census;
pub mod pins;
pub mod policy;
pub mod shared;
pub mod snapshot;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::{broadcast, watch};

use crate::config::Census;
use crate::fleet::census::Split;
use crate::fleet::{Fleet, FleetState, Node, NodeId};
pub use crate::metrics::Decision;
use crate::rendezvous;
use crate::room::RoomKey;
use crate::throttle::Throttle;
use pins::{Pinned, Pins};
pub use policy::{estimate, Settings};
use shared::{SharedError, SharedPins};

/// A room's node and how it was chosen.
#[derive(Clone)]
pub struct Routed {
    /// The node.
    pub node: Arc<Node>,
    /// How it was chosen.
    pub decision: Decision,
}

impl std::fmt::Debug for Routed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routed")
            .field("node", &self.node.id)
            .field("decision", &self.decision)
            .finish()
    }
}

/// An event for observers (the demo's console): a room got a node.
#[derive(Debug, Clone)]
pub struct PinEvent {
    /// The room.
    pub room: String,
    /// Its node.
    pub node: NodeId,
    /// The node it left, for a re-placement.
    pub from: Option<NodeId>,
}

/// What this router's pin table says of a room.
enum Held {
    /// Pinned to a node that may keep it (in the fleet and healthy; draining nodes keep rooms).
    Usable(Arc<Node>),
    /// Pinned to a node that may not keep it.
    Stale(NodeId),
    /// Not pinned.
    None,
}

/// The routing core: fleet state, pin table, and the shared pin store when there is one.
pub struct Router {
    fleet: Arc<Fleet>,
    pins: Arc<Pins>,
    /// `[placement]`, replaced by a reload.
    settings: ArcSwap<Settings>,
    /// `[census]`, read by the census poll, replaced by a reload.
    census: watch::Sender<Arc<Census>>,
    shared: OnceLock<Arc<SharedPins>>,
    events: broadcast::Sender<PinEvent>,
    /// Set once anyone subscribes: until then placements skip the channel.
    listened: AtomicBool,
    over_max_cpu: Throttle,
    unpinned: Throttle,
    /// The rooms the last census round found live on more than one node.
    splits: Mutex<Vec<Split>>,
}

impl Router {
    /// A router over this fleet and pin table, placing new rooms by `settings`.
    pub fn new(fleet: Arc<Fleet>, pins: Arc<Pins>, settings: Settings) -> Router {
        Router {
            fleet,
            pins,
            settings: ArcSwap::from_pointee(settings),
            census: watch::Sender::new(Arc::default()),
            shared: OnceLock::new(),
            events: broadcast::channel(1024).0,
            listened: AtomicBool::new(false),
            over_max_cpu: Throttle::default(),
            unpinned: Throttle::default(),
            splits: Mutex::default(),
        }
    }

    /// The placement settings in force.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// Places new rooms by `settings` from now on (a reload).
    pub fn set_settings(&self, settings: Settings) {
        self.settings.store(Arc::new(settings));
    }

    /// Polls the nodes' census by `census` from now on (start-up, reload).
    pub fn set_census(&self, census: Census) {
        crate::rounds::set_if_changed(&self.census, census);
    }

    /// Rooms placed while every candidate was at or above `max_cpu`.
    pub fn placed_over_max_cpu(&self) -> u64 {
        self.over_max_cpu.count()
    }

    /// Requests of rooms routed without a pin because the pin table was full
    /// (`limits.max_pins`): every request of such a room counts, not the room once.
    pub fn routed_unpinned(&self) -> u64 {
        self.unpinned.count()
    }

    /// The fleet this router reads.
    pub fn fleet(&self) -> &Arc<Fleet> {
        &self.fleet
    }

    /// The pin table.
    pub fn pins(&self) -> &Arc<Pins> {
        &self.pins
    }

    /// Shares this router's pins with other replicas through `shared` from now on.
    pub fn share_pins(&self, shared: Arc<SharedPins>) {
        let _set_once = self.shared.set(shared);
    }

    /// The shared pin store, when there is one.
    pub fn shared_pins(&self) -> Option<&Arc<SharedPins>> {
        self.shared.get()
    }

    /// Pin and re-pin events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<PinEvent> {
        self.listened.store(true, Ordering::Relaxed);
        self.events.subscribe()
    }

    /// The node for a room; `Ok(None)` when no node can take it.
    ///
    /// A pinned room stays on its node while that node is in the fleet and healthy (draining
    /// nodes keep their rooms); otherwise the room is placed and stays where it lands. `admit`
    /// is asked first when the room needs placing (no usable pin here), and its error refuses
    /// the request: the proxy's new-room rate per client. With a shared pin store, a room with
    /// no usable pin here is asked for there, so that every replica sends it to one node.
    pub async fn route<E>(
        &self,
        key: &RoomKey<'_>,
        admit: impl FnOnce() -> Result<(), E>,
    ) -> Result<Option<Routed>, E> {
        let room = key.as_str();
        // One fleet state for the whole decision, but not across the shared store's round trip.
        let state = self.fleet.load();
        let stale = match self.held(&state, room) {
            Held::Usable(node) => {
                return Ok(Some(Routed {
                    node,
                    decision: Decision::Pinned,
                }))
            }
            Held::Stale(id) => Some(id),
            Held::None => None,
        };
        admit()?;
        Ok(match self.shared.get() {
            Some(shared) if stale.is_some() || !self.pins.full() => {
                drop(state);
                self.route_shared(shared, room, stale).await
            }
            _ => self.place_here(&state, room, stale),
        })
    }

    fn held(&self, state: &FleetState, room: &str) -> Held {
        let found = self
            .pins
            .with_pin(room, |id| match state.node(id.as_str()) {
                Some(node) if node.live.healthy() => Held::Usable(node.clone()),
                _ => Held::Stale(id.clone()),
            });
        found.unwrap_or(Held::None)
    }

    /// Places the room with this router's readings alone and pins it (moving it from `stale`).
    fn place_here(&self, state: &FleetState, room: &str, stale: Option<NodeId>) -> Option<Routed> {
        if stale.is_none() && self.pins.full() {
            // A request racing this one may have pinned the room before the table filled.
            if let Held::Usable(node) = self.held(state, room) {
                let decision = Decision::Pinned;
                return Some(Routed { node, decision });
            }
            return self.route_unpinned(state, room);
        }
        let chosen = self.place(state, room)?;
        let held = self.pin(
            state,
            room,
            stale.as_ref(),
            state.nodes()[chosen].id.clone(),
        );
        self.settle(state, room, held, stale.is_some(), true)
    }

    /// The pin write that holds, counted into the nodes' room counts (`state`'s).
    fn pin(&self, state: &FleetState, room: &str, stale: Option<&NodeId>, node: NodeId) -> Pinned {
        let held = match stale {
            Some(old) => self.pins.repin(room, old, node),
            None => self.pins.pin_if_absent(room, node),
        };
        if held.created {
            if let Some(live) = state.live(held.node.as_str()) {
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
        held
    }

    /// The routed answer for a pin that holds: its node (in `state`, or in a newer state when
    /// a concurrent request pinned a node `state` does not know) and the decision it stands for.
    fn settle(
        &self,
        state: &FleetState,
        room: &str,
        held: Pinned,
        moved: bool,
        placed_here: bool,
    ) -> Option<Routed> {
        let node = match state.node(held.node.as_str()) {
            Some(node) => node.clone(),
            None => self.fleet.load().node(held.node.as_str())?.clone(),
        };
        let decision = match &held.displaced {
            Some(_) if held.created && moved => Decision::Replaced,
            _ if held.created && placed_here => Decision::Placed,
            _ if held.created => Decision::Shared,
            _ => Decision::Pinned,
        };
        if held.created && decision != Decision::Shared {
            let from = held.displaced.filter(|_| moved);
            self.announce(room, &node.id, from);
        }
        Some(Routed { node, decision })
    }

    /// A new room while the pin table is full: bounded rendezvous over total rooms, which
    /// sends every request of the room to one node while the fleet and its room counts stay
    /// as they are, and grows no memory.
    fn route_unpinned(&self, state: &FleetState, room: &str) -> Option<Routed> {
        if self.unpinned.due().is_some() {
            tracing::warn!(
                max_pins = self.pins.len(),
                requests_so_far = self.unpinned.count(),
                "the pin table is full (limits.max_pins); new rooms are routed by hash, unpinned"
            );
        }
        let hash = rendezvous::seed(room.as_bytes());
        let index = policy::by_hash(state, &self.settings.load(), hash)?;
        Some(Routed {
            node: state.nodes()[index].clone(),
            decision: Decision::Unpinned,
        })
    }

    /// The index of the node placement chooses for a new room.
    fn place(&self, state: &FleetState, room: &str) -> Option<usize> {
        let hash = rendezvous::seed(room.as_bytes());
        let settings = self.settings.load();
        let chosen = policy::choose(state, &settings, hash, Instant::now())?;
        if chosen.over_max_cpu && self.over_max_cpu.due().is_some() {
            tracing::warn!(
                max_cpu = settings.max_cpu,
                rooms_so_far = self.placed_over_max_cpu(),
                "every available node is over max_cpu or full; placing on the least busy anyway"
            );
        }
        Some(chosen.index)
    }

    /// The node for a room this router holds no usable pin for, agreed with the other replicas
    /// through the store (see [`shared`]); placed by this router alone when the store does not
    /// answer.
    async fn route_shared(
        &self,
        shared: &SharedPins,
        room: &str,
        stale: Option<NodeId>,
    ) -> Option<Routed> {
        let proposal = {
            let state = self.fleet.load();
            (self.place(&state, room)).map(|chosen| state.nodes()[chosen].id.clone())
        };
        let mut replaceable = stale.as_ref().map(|id| id.as_str().to_owned());
        // Twice is enough: a node this router cannot use is replaced by the proposal, which it
        // can; the third try covers another replica replacing it at the same moment.
        for _ in 0..3 {
            let answer = match &proposal {
                Some(node) => (shared.claim(room, node.as_str(), replaceable.as_deref())).await,
                // Nothing to propose: only a room the store holds can be routed.
                None => (shared.held(room).await).map(|held| (held.unwrap_or_default(), false)),
            };
            match answer {
                Ok((node, placed_here)) if self.usable(&node) => {
                    let state = self.fleet.load();
                    let Some(id) = state.node(&node).map(|n| n.id.clone()) else {
                        break;
                    };
                    let held = self.pin(&state, room, stale.as_ref(), id);
                    if held.created && !placed_here {
                        tracing::debug!(room, node, "room pinned as another replica pinned it");
                    }
                    return self.settle(&state, room, held, stale.is_some(), placed_here);
                }
                Ok(_) if proposal.is_none() => return None,
                Ok((node, _)) => {
                    tracing::info!(
                        room,
                        node,
                        "room pinned by another replica to a node unusable here; moving it"
                    );
                    replaceable = Some(node);
                }
                Err(e) => {
                    shared.failed(&e);
                    break;
                }
            }
        }
        self.place_here(&self.fleet.load(), room, stale)
    }

    /// Whether a node named `node` may hold rooms here (in the fleet and healthy; draining
    /// nodes keep the rooms they have).
    fn usable(&self, node: &str) -> bool {
        (self.fleet.load().node(node)).is_some_and(|node| node.live.healthy())
    }

    /// Keeps a connection to the shared store (trying again every second, or every
    /// `sync_interval` if shorter, while it does not answer; with sentinels, following them to
    /// a new primary before each sync) and sends it this router's pins every `sync_interval`.
    /// Runs until dropped; nothing without a store.
    pub async fn run_shared(self: Arc<Self>) {
        let Some(shared) = self.shared.get().cloned() else {
            return;
        };
        // The sync interval in whole ticks of at most a second.
        let interval = shared.sync_interval();
        let ticks_per_sync = u32::try_from(interval.as_millis().div_ceil(1000)).unwrap_or(u32::MAX);
        let mut every = tokio::time::interval(interval / ticks_per_sync.max(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for tick in 0u64.. {
            every.tick().await;
            let sync = tick % u64::from(ticks_per_sync.max(1)) == 0;
            if let Err(e) = shared.connect(sync).await {
                shared.failed(&e);
                continue;
            }
            if sync {
                if let Err(e) = self.sync_shared(&shared).await {
                    shared.failed(&e);
                }
            }
        }
    }

    /// Sends this router's live pins to the store (refreshing their expiry there) and follows
    /// the store where it holds a room elsewhere or unpinned it. Returns how many rooms changed
    /// here.
    pub async fn sync_shared(&self, shared: &SharedPins) -> Result<usize, SharedError> {
        let pins = self.pins.export();
        let mut changed = 0;
        for batch in pins.chunks(shared::SYNC_BATCH) {
            let held = shared.sync(batch).await?;
            for (pin, held) in batch.iter().zip(held) {
                match held {
                    shared::Held::Agreed => {}
                    shared::Held::Unpinned => {
                        if self.unpin(&pin.room).is_some() {
                            tracing::info!(room = %pin.room, "room unpinned by another replica");
                            changed += 1;
                        }
                    }
                    shared::Held::On(node) => {
                        if self.usable(&node) && self.set_pin(&pin.room, &node).is_some() {
                            tracing::info!(room = %pin.room, node, from = %pin.node, "room moved by another replica");
                            changed += 1;
                        }
                    }
                }
            }
        }
        Ok(changed)
    }

    /// Forgets idle pins and counts their rooms out of their nodes; returns how many.
    pub fn sweep(&self) -> usize {
        let state = self.fleet.load();
        self.pins.sweep(|node| {
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

    /// Unpins a room (operators); its node counts it out.
    pub fn unpin(&self, room: &str) -> Option<NodeId> {
        let node = self.pins.unpin(room)?;
        if let Some(live) = self.fleet.load().live(node.as_str()) {
            live.room_left();
        }
        Some(node)
    }

    fn announce(&self, room: &str, node: &NodeId, from: Option<NodeId>) {
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
    /// (affinity cookie), else the least busy node, ties spread by `spread` (a hash of the
    /// client).
    pub fn route_unrouted(&self, preferred: Option<&str>, spread: u64) -> Option<Arc<Node>> {
        let state = self.fleet.load();
        if let Some(node) = preferred.and_then(|name| state.node(name)) {
            if node.live.healthy() {
                return Some(node.clone());
            }
        }
        let chosen = policy::choose(&state, &self.settings.load(), spread, Instant::now())?;
        Some(state.nodes()[chosen.index].clone())
    }
}
