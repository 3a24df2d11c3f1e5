//! The fleet: which nodes exist and how busy each one is.
//!
//! Two inputs change the fleet — the node list (config) and CPU readings (Prometheus). Each change
//! builds a new immutable [`FleetState`] and publishes it through `arc-swap`; the request path only
//! ever reads the current state, through a per-thread cache of it ([`Fleet::with_state`]), so it
//! takes no lock and no atomic read-modify-write. Writers serialise on a mutex of their own.
//! This module knows nothing of requests.

pub mod health;
pub mod live;
pub mod prometheus;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use foldhash::fast::RandomState;

use crate::config::NodeSpec;
use crate::placement::rendezvous;
use crate::placement::shortlist::Shortlist;
pub use live::{Load, NodeLive, Thresholds, Totals, Words};

/// A node's name: its identity in pins, cookies and `X-Jitsi-Shard`. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// Wraps a node name.
    pub fn new(name: &str) -> NodeId {
        NodeId(Arc::from(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether both are clones of one id (then they name the same node); a cheaper test than
    /// equality, which may be true of ids made apart.
    pub fn same(&self, other: &NodeId) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Lets the name index be searched with a plain `&str` (cookies, admin input); sound because
/// `NodeId` hashes and compares exactly as its `str`.
impl std::borrow::Borrow<str> for NodeId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// One Jitsi node as the router sees it.
#[derive(Debug)]
pub struct Node {
    /// Its identity.
    pub id: NodeId,
    /// What the config said about it.
    pub spec: NodeSpec,
    /// The node's rendezvous-hash seed, computed once from its name.
    pub seed: u64,
    /// Rooms, health and drain; shared by every state that includes this node.
    pub live: Arc<NodeLive>,
}

/// An immutable view of the fleet, published whole.
///
/// A CPU reading makes a new state every interval; its nodes and name maps are the last
/// state's, shared, so that a reading of a large fleet allocates a few vectors
/// and no node.
#[derive(Debug)]
pub struct FleetState {
    nodes: Arc<[Arc<Node>]>,
    names: Arc<Names>,
    slots: Vec<Slot>,
    cpu: Vec<Option<f64>>,
    cpu_read_at: Option<Instant>,
    max_staleness: Duration,
    learned_room_cost: Option<f64>,
    /// The bounded-load cap the last placement on this state found (see `placement::policy`).
    cap_hint: AtomicU64,
    /// The counters every node of this state counts into; `None` if some node counts elsewhere
    /// (then placement always reads every node).
    totals: Option<Arc<Totals>>,
    /// The nodes the next new rooms can go to, found by the last full placement on this state.
    shortlist: arc_swap::ArcSwapOption<Shortlist>,
}

/// A state's lookups by name, which change only with the node list.
#[derive(Debug)]
struct Names {
    by_name: HashMap<NodeId, usize, RandomState>,
    by_server_id: HashMap<String, usize, RandomState>,
    lives: HashMap<NodeId, Arc<NodeLive>, RandomState>,
    /// Those of `lives` not in the nodes.
    removed: Vec<Arc<NodeLive>>,
}

/// What placement reads of each node, stored contiguously (aligned with
/// [`FleetState::nodes`]) so a scan of a large fleet does not chase every node's full record.
#[derive(Debug)]
pub struct Slot {
    /// The chunk holding the node's packed word (rooms, health, drain), next to its neighbours'.
    words: Arc<Words>,
    /// The word's place in its chunk.
    at: usize,
    /// The node's rendezvous seed.
    pub seed: u64,
    /// The node's last CPU reading, infinite without one (see [`FleetState::cpu`] for staleness).
    base: f64,
}

impl Slot {
    /// The node's rooms, health and drain, read at once.
    #[inline(always)]
    pub fn load(&self) -> Load {
        self.words.load(self.at)
    }

    /// The node's last CPU reading, `f64::INFINITY` when it has none, whatever its age.
    pub fn base(&self) -> f64 {
        self.base
    }

    /// See [`Words::watch`].
    pub(crate) fn watch(&self, rooms: u32) {
        self.words.watch(self.at, rooms);
    }

    /// The chunk holding the node's packed word, and the word's place in it.
    pub(crate) fn word(&self) -> (&Arc<Words>, usize) {
        (&self.words, self.at)
    }
}

impl FleetState {
    /// All nodes, in config order.
    pub fn nodes(&self) -> &[Arc<Node>] {
        &self.nodes
    }

    /// Placement's compact view of the nodes, aligned with [`nodes`](Self::nodes).
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The node with this name.
    pub fn node(&self, name: &str) -> Option<&Arc<Node>> {
        self.index(name).map(|i| &self.nodes[i])
    }

    /// The position in [`nodes`](Self::nodes) of the node with this name.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.by_name.get(name).copied()
    }

    /// The node that declared this videobridge server id.
    pub fn node_for_server_id(&self, server_id: &str) -> Option<&Arc<Node>> {
        self.names
            .by_server_id
            .get(server_id)
            .map(|&i| &self.nodes[i])
    }

    /// Busy-CPU fractions aligned with [`nodes`](Self::nodes); all `None` when there is no reading
    /// or the last reading is older than `max_staleness` at `now`.
    pub fn cpu(&self, now: Instant) -> &[Option<f64>] {
        match self.cpu_read_at {
            Some(at) if now.saturating_duration_since(at) <= self.max_staleness => &self.cpu,
            _ => &[],
        }
    }

    /// When CPU was last read successfully.
    pub fn cpu_read_at(&self) -> Option<Instant> {
        self.cpu_read_at
    }

    /// Live state of a node known now or earlier (removed nodes keep theirs, so their rooms can
    /// still be counted out as they move).
    pub fn live(&self, name: &str) -> Option<&Arc<NodeLive>> {
        self.names.lives.get(name)
    }

    /// Busy CPU one more room adds, learned from consecutive readings; `None` until enough rooms
    /// came or went between two readings.
    pub fn learned_room_cost(&self) -> Option<f64> {
        self.learned_room_cost
    }

    /// The bounded-load cap the last placement on this state found, placement's first guess.
    pub(crate) fn cap_hint(&self) -> u64 {
        self.cap_hint.load(Ordering::Relaxed)
    }

    /// Records the cap a placement found.
    pub(crate) fn set_cap_hint(&self, cap: u64) {
        self.cap_hint.store(cap, Ordering::Relaxed);
    }

    /// The counters all of this state's nodes (and the removed ones still known) count into.
    pub(crate) fn totals(&self) -> Option<&Arc<Totals>> {
        self.totals.as_ref()
    }

    /// Nodes known from earlier states but not in this one.
    pub(crate) fn removed(&self) -> &[Arc<NodeLive>] {
        &self.names.removed
    }

    /// Placement's short list of nodes for the next new rooms (see `placement::shortlist`).
    pub(crate) fn shortlist(&self) -> &arc_swap::ArcSwapOption<Shortlist> {
        &self.shortlist
    }
}

/// Rooms that must come or go between two readings before they teach the per-room cost.
const ROOMS_TO_LEARN_COST: u32 = 20;

/// The inputs a [`FleetState`] is built from; only writers touch them.
struct Inputs {
    /// The nodes in effect: the file's, with the runtime overlay applied.
    specs: Vec<NodeSpec>,
    /// The nodes of the config file.
    file_specs: Vec<NodeSpec>,
    /// Runtime changes (admin API) by name: a registered/updated node, or `None` for a removal.
    /// They are layered over the file, so they survive reloads.
    overlay: Vec<(String, Option<NodeSpec>)>,
    cpu_by_instance: HashMap<String, f64>,
    cpu_read_at: Option<Instant>,
    max_staleness: Duration,
    lives: HashMap<NodeId, Arc<NodeLive>, RandomState>,
    /// Where new nodes' packed words come from, side by side.
    arena: live::Arena,
    learned_room_cost: Option<f64>,
    rooms_at_reading: HashMap<NodeId, u32, RandomState>,
    /// The nodes and name maps of the state last built, while the node list has not changed
    /// since; [`apply_specs`] clears it.
    layout: Option<Layout>,
}

/// What states share while the node list is unchanged: the nodes, the lookups by name, and the
/// counters every node counts into (see [`FleetState::totals`]).
type Layout = (Arc<[Arc<Node>]>, Arc<Names>, Option<Arc<Totals>>);

/// The published fleet state plus the inputs it is rebuilt from.
pub struct Fleet {
    state: Arc<ArcSwap<FleetState>>,
    inputs: Mutex<Inputs>,
}

impl Fleet {
    /// A fleet of these nodes with no CPU reading yet.
    pub fn new(specs: Vec<NodeSpec>, max_staleness: Duration) -> Fleet {
        let mut inputs = Inputs {
            specs: Vec::new(),
            file_specs: specs.clone(),
            overlay: Vec::new(),
            cpu_by_instance: HashMap::new(),
            cpu_read_at: None,
            max_staleness,
            lives: HashMap::default(),
            arena: live::Arena::default(),
            learned_room_cost: None,
            rooms_at_reading: HashMap::default(),
            layout: None,
        };
        apply_specs(&mut inputs, specs);
        Fleet {
            state: Arc::new(ArcSwap::from_pointee(build(&mut inputs))),
            inputs: Mutex::new(inputs),
        }
    }

    /// The current state; lock-free.
    pub fn load(&self) -> arc_swap::Guard<Arc<FleetState>> {
        self.state.load()
    }

    /// Runs `f` on the current state, read through this thread's cache of it: while the state
    /// is unchanged that is one plain load, where [`load`](Self::load) takes two atomic
    /// read-modify-writes (each a full barrier on x86, which keeps a request's cache misses from
    /// overlapping anything before it). The cache keeps the state it last saw alive until the
    /// thread's next call, so a thread that stops routing may hold one replaced state.
    pub fn with_state<R>(&self, f: impl FnOnce(&FleetState) -> R) -> R {
        type Cached = arc_swap::Cache<Arc<ArcSwap<FleetState>>, Arc<FleetState>>;
        thread_local! {
            static CACHED: std::cell::RefCell<Option<Cached>> = const { std::cell::RefCell::new(None) };
        }
        CACHED.with(|cell| match cell.try_borrow_mut() {
            Ok(mut cached) => {
                let cache = match &mut *cached {
                    Some(cache) if std::ptr::eq(cache.arc_swap(), &*self.state) => cache,
                    other => other.insert(arc_swap::Cache::new(self.state.clone())),
                };
                f(cache.load())
            }
            // Called from within `f`: the state `load` gives.
            Err(_) => f(&self.state.load()),
        })
    }

    /// The current state as an owned handle, for readers that keep it across awaits or loops.
    pub fn snapshot(&self) -> Arc<FleetState> {
        self.state.load_full()
    }

    /// Replaces the config file's node list (start-up, reload); runtime changes stay layered on
    /// top. A node whose `drain` setting changed takes the new setting; runtime drain switches of
    /// other nodes stay as they are.
    pub fn set_nodes(&self, specs: Vec<NodeSpec>) {
        self.update(|inputs| {
            inputs.file_specs = specs;
            apply_specs(inputs, effective(inputs));
        });
    }

    /// Registers or updates a node at runtime (kept across reloads). Fails, naming the clash, if
    /// another node already serves one of its videobridge server ids.
    pub fn put_node(&self, spec: NodeSpec) -> Result<(), String> {
        let mut result = Ok(());
        self.update(|inputs| {
            let clash = inputs.specs.iter().find(|other| {
                other.name != spec.name
                    && other
                        .jvb_server_ids
                        .iter()
                        .any(|id| spec.jvb_server_ids.contains(id))
            });
            if let Some(other) = clash {
                result = Err(format!(
                    "node {:?} already serves one of these jvb_server_ids",
                    other.name
                ));
                return;
            }
            set_overlay(inputs, &spec.name.clone(), Some(spec));
            apply_specs(inputs, effective(inputs));
        });
        result
    }

    /// Removes a node at runtime (kept across reloads); false if no such node is in effect.
    pub fn remove_node(&self, name: &str) -> bool {
        let mut found = false;
        self.update(|inputs| {
            found = inputs.specs.iter().any(|s| s.name == name);
            if found {
                set_overlay(inputs, name, None);
                apply_specs(inputs, effective(inputs));
            }
        });
        found
    }

    /// Records a CPU reading: busy fraction by Prometheus label value. Rooms placed before it
    /// count as included in it from now on.
    pub fn set_cpu(&self, cpu_by_instance: HashMap<String, f64>, read_at: Instant) {
        self.update(|inputs| {
            inputs.learned_room_cost = learn_room_cost(inputs, &cpu_by_instance);
            inputs.rooms_at_reading = inputs
                .lives
                .iter()
                .map(|(id, live)| (id.clone(), live.rooms()))
                .collect();
            inputs.cpu_by_instance = cpu_by_instance;
            inputs.cpu_read_at = Some(read_at);
            for live in inputs.lives.values() {
                live.reading_taken();
            }
        });
    }

    /// Drains (`true`) or undrains a node at runtime; returns the previous setting, or `None`
    /// for an unknown node. A draining node keeps its rooms and takes no new ones.
    pub fn set_draining(&self, name: &str, draining: bool) -> Option<bool> {
        let live = self.state.load().node(name)?.live.clone();
        let before = live.set_draining(draining);
        if before != draining {
            tracing::info!(node = name, draining, "node drain changed");
        }
        Some(before)
    }

    /// Time since the last good CPU reading.
    pub fn snapshot_age(&self) -> Option<Duration> {
        self.state.load().cpu_read_at.map(|at| at.elapsed())
    }

    fn update(&self, change: impl FnOnce(&mut Inputs)) {
        // A poisoned lock only means a writer panicked mid-change; the inputs are still whole.
        let mut inputs = self.inputs.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut inputs);
        self.state.store(Arc::new(build(&mut inputs)));
    }
}

fn set_overlay(inputs: &mut Inputs, name: &str, change: Option<NodeSpec>) {
    match inputs.overlay.iter_mut().find(|(n, _)| n == name) {
        Some(entry) => entry.1 = change,
        None => inputs.overlay.push((name.to_owned(), change)),
    }
}

/// The file's nodes with the runtime overlay applied: replaced or removed in place, new ones last.
fn effective(inputs: &Inputs) -> Vec<NodeSpec> {
    let overlaid = |name: &str| {
        inputs
            .overlay
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, change)| change)
    };
    let mut specs: Vec<NodeSpec> = inputs
        .file_specs
        .iter()
        .filter_map(|spec| match overlaid(&spec.name) {
            Some(change) => change.clone(),
            None => Some(spec.clone()),
        })
        .collect();
    for (name, change) in &inputs.overlay {
        if let Some(spec) = change {
            if !inputs.file_specs.iter().any(|s| &s.name == name) {
                specs.push(spec.clone());
            }
        }
    }
    specs
}

fn apply_specs(inputs: &mut Inputs, specs: Vec<NodeSpec>) {
    inputs.layout = None;
    for spec in &specs {
        let previous = inputs.specs.iter().find(|old| old.name == spec.name);
        let arena = &mut inputs.arena;
        let live = inputs
            .lives
            .entry(NodeId::new(&spec.name))
            .or_insert_with(|| Arc::new(arena.node()));
        if previous.is_none_or(|old| old.drain != spec.drain) {
            live.set_draining(spec.drain);
        }
    }
    inputs.specs = specs;
}

/// Learns the busy CPU one room adds from two consecutive readings: over the nodes read both
/// times, the change in CPU divided by the change in their pinned rooms. Idle load and other
/// tenants cancel out, unlike a plain CPU-per-room ratio. Samples with too few rooms changed are
/// skipped; good ones are smoothed (half weight each) and bounded to 0.05 %..5 % per room.
fn learn_room_cost(inputs: &Inputs, cpu_by_instance: &HashMap<String, f64>) -> Option<f64> {
    let (mut cpu_change, mut room_change) = (0.0, 0i64);
    for spec in &inputs.specs {
        let (Some(before), Some(now)) = (
            inputs.cpu_by_instance.get(&spec.instance),
            cpu_by_instance.get(&spec.instance),
        ) else {
            continue;
        };
        let Some(live) = inputs.lives.get(spec.name.as_str()) else {
            continue;
        };
        let rooms_then = inputs
            .rooms_at_reading
            .get(spec.name.as_str())
            .copied()
            .unwrap_or(0);
        cpu_change += now - before;
        room_change += i64::from(live.rooms()) - i64::from(rooms_then);
    }
    if room_change.unsigned_abs() < u64::from(ROOMS_TO_LEARN_COST) {
        return inputs.learned_room_cost;
    }
    let sample = cpu_change / room_change as f64;
    // Rooms came but CPU fell (or the reverse): other load moved; nothing to learn.
    if sample.is_nan() || sample <= 0.0 {
        return inputs.learned_room_cost;
    }
    let sample = sample.clamp(0.0005, 0.05);
    Some(
        inputs
            .learned_room_cost
            .map_or(sample, |old| (old + sample) / 2.0),
    )
}

fn build(inputs: &mut Inputs) -> FleetState {
    let (nodes, names, totals) = match &inputs.layout {
        Some(shared) => shared.clone(),
        None => inputs.layout.insert(layout(inputs)).clone(),
    };
    let cpu: Vec<Option<f64>> = inputs
        .specs
        .iter()
        .map(|spec| inputs.cpu_by_instance.get(&spec.instance).copied())
        .collect();
    let slots = nodes
        .iter()
        .zip(&cpu)
        .map(|(n, cpu)| Slot {
            words: n.live.word().0.clone(),
            at: n.live.word().1,
            seed: n.seed,
            // + 0.0 turns a reading of -0 into 0, so the bits of every base order as the values.
            base: cpu.map_or(f64::INFINITY, |c| c + 0.0),
        })
        .collect();
    FleetState {
        nodes,
        names,
        slots,
        cpu,
        cpu_read_at: inputs.cpu_read_at,
        max_staleness: inputs.max_staleness,
        learned_room_cost: inputs.learned_room_cost,
        cap_hint: AtomicU64::new(0),
        totals,
        shortlist: arc_swap::ArcSwapOption::empty(),
    }
}

/// The nodes of `inputs.specs` (in that order) and the lookups by name: what states share
/// until the node list changes.
fn layout(inputs: &Inputs) -> Layout {
    let nodes: Arc<[Arc<Node>]> = inputs
        .specs
        .iter()
        .map(|spec| {
            // The id the node got when it first joined, so that every state hands out the same
            // one: pins hold it, and routing tells a pin's node by it (`NodeId::same`) before it
            // looks the name up.
            let (id, live) = match inputs.lives.get_key_value(spec.name.as_str()) {
                Some((id, live)) => (id.clone(), live.clone()),
                None => (NodeId::new(&spec.name), Arc::default()),
            };
            Arc::new(Node {
                seed: rendezvous::seed(spec.name.as_bytes()),
                live,
                id,
                spec: spec.clone(),
            })
        })
        .collect();
    let by_name: HashMap<NodeId, usize, RandomState> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.clone(), i))
        .collect();
    let by_server_id = nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.spec.jvb_server_ids.iter().map(move |id| (id.clone(), i)))
        .collect();
    let totals = shared_totals(nodes.iter().map(|n| &n.live).chain(inputs.lives.values()));
    let removed = (inputs.lives.iter())
        .filter(|&(id, _)| !by_name.contains_key(id))
        .map(|(_, live)| live.clone())
        .collect();
    let names = Names {
        by_name,
        by_server_id,
        lives: inputs.lives.clone(),
        removed,
    };
    (nodes, Arc::new(names), totals)
}

/// The totals every known node counts into, if they all count into the same.
fn shared_totals<'a>(mut lives: impl Iterator<Item = &'a Arc<NodeLive>>) -> Option<Arc<Totals>> {
    let first = lives.next()?.totals();
    lives
        .all(|live| Arc::ptr_eq(live.totals(), first))
        .then(|| first.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet() -> Fleet {
        let mut b = NodeSpec::new("b", "http://10.0.0.2:80").unwrap();
        b.jvb_server_ids = vec!["jvb-b".into()];
        Fleet::new(
            vec![NodeSpec::new("a", "http://10.0.0.1:80").unwrap(), b],
            Duration::from_secs(90),
        )
    }

    #[test]
    fn cpu_is_aligned_with_nodes_by_instance() {
        let fleet = fleet();
        let now = Instant::now();
        assert!(fleet.load().cpu(now).is_empty());
        fleet.set_cpu(HashMap::from([("10.0.0.2:80".to_owned(), 0.3)]), now);
        assert_eq!(fleet.load().cpu(now), &[None, Some(0.3)]);
    }

    #[test]
    fn a_threads_cached_state_follows_changes_and_fleets_keep_apart() {
        let (one, two) = (fleet(), fleet());
        let names = |state: &FleetState| -> Vec<String> {
            state.nodes().iter().map(|n| n.id.to_string()).collect()
        };
        assert_eq!(one.with_state(names), ["a", "b"]);
        one.set_nodes(vec![NodeSpec::new("c", "http://10.0.0.3:80").unwrap()]);
        assert_eq!(
            one.with_state(names),
            ["c"],
            "a replaced state is seen at once"
        );
        assert_eq!(
            two.with_state(names),
            ["a", "b"],
            "another fleet, same thread"
        );
        assert_eq!(one.with_state(names), ["c"]);
        // Called from within itself, it reads the state without the cache.
        let nested = one.with_state(|outer| (names(outer), two.with_state(names)));
        assert_eq!(
            nested,
            (vec!["c".to_owned()], vec!["a".to_owned(), "b".to_owned()])
        );
    }

    #[test]
    fn stale_cpu_is_ignored() {
        let fleet = fleet();
        let then = Instant::now();
        fleet.set_cpu(HashMap::from([("10.0.0.1:80".to_owned(), 0.3)]), then);
        assert!(fleet.load().cpu(then + Duration::from_secs(91)).is_empty());
    }

    #[test]
    fn room_cost_is_learned_from_the_change_between_readings() {
        let fleet = fleet();
        let reading = |a: f64, b: f64| {
            HashMap::from([("10.0.0.1:80".to_owned(), a), ("10.0.0.2:80".to_owned(), b)])
        };
        fleet.set_cpu(reading(0.30, 0.10), Instant::now());
        let state = fleet.snapshot();
        for _ in 0..30 {
            state.nodes()[0].live.room_placed();
        }
        for _ in 0..10 {
            state.nodes()[1].live.room_placed();
        }
        // 40 rooms added 0.12 busy CPU in all: 0.003 per room, whatever the idle load.
        fleet.set_cpu(reading(0.39, 0.13), Instant::now());
        let learned = fleet.snapshot().learned_room_cost().unwrap();
        assert!((learned - 0.003).abs() < 1e-9, "{learned}");
        // Too few rooms changed: the estimate stays.
        fleet.set_cpu(reading(0.50, 0.50), Instant::now());
        assert_eq!(fleet.snapshot().learned_room_cost(), Some(learned));
    }

    #[test]
    fn runtime_nodes_are_layered_over_the_file() {
        let fleet = fleet();
        let mut c = NodeSpec::new("c", "http://10.0.0.3:80").unwrap();
        fleet.put_node(c.clone()).unwrap();
        assert!(fleet.remove_node("a"));
        assert!(!fleet.remove_node("zzz"));
        let names = |f: &Fleet| {
            f.snapshot()
                .nodes()
                .iter()
                .map(|n| n.id.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&fleet), ["b", "c"]);
        // A reload of the file keeps the runtime changes.
        fleet.set_nodes(vec![
            NodeSpec::new("a", "http://10.0.0.1:80").unwrap(),
            NodeSpec::new("d", "http://10.0.0.4:80").unwrap(),
        ]);
        assert_eq!(names(&fleet), ["d", "c"]);
        c.jvb_server_ids = vec!["d".into()];
        assert!(fleet.put_node(c).unwrap_err().contains("\"d\""));
    }

    #[test]
    fn a_node_keeps_its_id_across_readings_and_reloads() {
        let fleet = Fleet::new(
            vec![NodeSpec::new("a", "http://10.0.0.1:80").unwrap()],
            Duration::from_secs(90),
        );
        let first = fleet.snapshot().nodes()[0].id.clone();
        fleet.set_cpu(
            HashMap::from([("10.0.0.1:80".to_string(), 0.5)]),
            Instant::now(),
        );
        fleet.set_nodes(vec![
            NodeSpec::new("b", "http://10.0.0.2:80").unwrap(),
            NodeSpec::new("a", "http://10.0.0.1:80").unwrap(),
        ]);
        let state = fleet.snapshot();
        assert!(state.nodes()[1].id.same(&first));
        assert!(!state.nodes()[0].id.same(&first));
        assert!(NodeId::new("a") == first && !NodeId::new("a").same(&first));
    }

    #[test]
    fn a_reading_shares_the_nodes_and_a_node_change_rebuilds_them() {
        let fleet = fleet();
        let before = fleet.snapshot();
        let now = Instant::now();
        fleet.set_cpu(HashMap::from([("10.0.0.1:80".to_owned(), 0.4)]), now);
        let read = fleet.snapshot();
        assert!(Arc::ptr_eq(&before.nodes, &read.nodes));
        assert!(Arc::ptr_eq(&before.names, &read.names));
        assert_eq!(read.cpu(now), &[Some(0.4), None]);
        assert_eq!(read.slots()[0].base(), 0.4);
        assert_eq!(read.node_for_server_id("jvb-b").unwrap().id.as_str(), "b");
        fleet
            .put_node(NodeSpec::new("c", "http://10.0.0.3:80").unwrap())
            .unwrap();
        let grown = fleet.snapshot();
        assert!(!Arc::ptr_eq(&read.nodes, &grown.nodes));
        assert_eq!(grown.index("c"), Some(2));
        assert!(grown.nodes()[0].id.same(&read.nodes()[0].id));
        assert_eq!(
            grown.cpu(now),
            &[Some(0.4), None, None],
            "the reading still applies"
        );
    }

    #[test]
    fn lookups_by_name_and_server_id() {
        let state = fleet().snapshot();
        assert_eq!(state.node("a").unwrap().id, NodeId::new("a"));
        assert_eq!(state.node_for_server_id("jvb-b").unwrap().id.as_str(), "b");
        assert!(state.node_for_server_id("b").is_none());
        assert!(state.node("zzz").is_none());
    }
}
