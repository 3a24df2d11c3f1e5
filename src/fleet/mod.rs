//! The fleet: which nodes exist and how busy each one is.
//!
//! Two inputs change the fleet — the node list (config, admin API) and CPU readings
//! (Prometheus). Each change builds a new immutable [`FleetState`] and publishes it through
//! `arc-swap`; a routing decision loads the current state once and takes no lock. Writers
//! serialise on a mutex of their own. What changes between rebuilds (rooms, health, drain) lives
//! in each node's [`NodeLive`], kept across rebuilds. This module imports no routing code: the
//! proxy reports failed requests to [`health`] and participants joining into [`NodeLive`],
//! placement counts rooms into it.

pub mod census;
pub mod health;
mod learn;
pub mod live;
pub mod prometheus;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use foldhash::fast::RandomState;
use tokio::sync::watch;

use crate::config::{Health, NodeSpec, Prometheus};
use crate::{rendezvous, rounds};
pub use live::{NodeLive, Thresholds};

/// A response's body, read whole unless it grows over `max` bytes (`Ok(None)`): what the
/// fleet's inputs (Prometheus, a node's census or signal-sidecar) answer is read at every
/// interval, and none may hold the router's memory with an answer it cannot use.
async fn body_within(
    response: &mut reqwest::Response,
    max: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > max {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

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

    /// Whether both are clones of one id, sharing one allocation of the name (every pin of a
    /// node holds a clone of the node's id, so a million pins do not hold a million names);
    /// equality is also true of ids made apart.
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

impl Node {
    /// The node's capacity relative to the others (`[[nodes]] weight`, 1.0 by default).
    pub fn weight(&self) -> f64 {
        self.spec.weight
    }
}

/// What placement reads of a node, kept in a list aligned with [`FleetState::nodes`]: a scan of a
/// large fleet then reads this list in order and one line of each node's live counters, rather
/// than each node's whole record.
#[derive(Debug)]
pub struct Placing {
    /// The node's rendezvous seed.
    pub seed: u64,
    /// The node's weight.
    pub weight: f64,
    /// Its rooms, health and drain.
    pub live: Arc<NodeLive>,
    /// `[[nodes]] max_rooms` (`u32::MAX`: no cap).
    pub max_rooms: u32,
    /// `[[nodes]] max_participants` (`u32::MAX`: no cap).
    pub max_participants: u32,
}

impl Placing {
    /// At its `max_rooms`, or at its `max_participants` by its census: it takes no new rooms.
    pub fn full(&self) -> bool {
        (self.max_rooms != u32::MAX && self.live.rooms() >= self.max_rooms)
            || (self.max_participants != u32::MAX
                && (self.live.participants()).is_some_and(|p| p >= self.max_participants))
    }
}

/// An immutable view of the fleet, published whole: rebuilt on every node-list change and CPU
/// reading, read by every routing decision.
#[derive(Debug)]
pub struct FleetState {
    nodes: Vec<Arc<Node>>,
    placing: Vec<Placing>,
    by_name: HashMap<NodeId, usize, RandomState>,
    by_server_id: HashMap<String, usize, RandomState>,
    /// Every node known now or earlier, by name.
    lives: HashMap<NodeId, Arc<NodeLive>, RandomState>,
    cpu: Vec<Option<f64>>,
    cpu_read_at: Option<Instant>,
    max_staleness: Duration,
    learned_room_cost: Option<f64>,
    learned_joins_per_room: Option<f64>,
}

impl FleetState {
    /// All nodes, in config order.
    pub fn nodes(&self) -> &[Arc<Node>] {
        &self.nodes
    }

    /// Placement's view of the nodes, aligned with [`nodes`](Self::nodes).
    pub fn placing(&self) -> &[Placing] {
        &self.placing
    }

    /// The node with this name.
    pub fn node(&self, name: &str) -> Option<&Arc<Node>> {
        self.index(name).map(|i| &self.nodes[i])
    }

    /// The position in [`nodes`](Self::nodes) of the node with this name.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The node that declared this videobridge server id.
    pub fn node_for_server_id(&self, server_id: &str) -> Option<&Arc<Node>> {
        self.by_server_id.get(server_id).map(|&i| &self.nodes[i])
    }

    /// Busy-CPU fractions aligned with [`nodes`](Self::nodes); empty when there is no reading
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
        self.lives.get(name)
    }

    /// Busy CPU one more room adds to a node of weight 1, learned from consecutive readings;
    /// `None` until enough rooms came or went between two readings.
    pub fn learned_room_cost(&self) -> Option<f64> {
        self.learned_room_cost
    }

    /// Participants who join through this router per room it places, learned over the windows
    /// between readings (joins to older rooms included); `None` until enough rooms were placed
    /// in one window while participants were seen joining.
    pub fn learned_joins_per_room(&self) -> Option<f64> {
        self.learned_joins_per_room
    }
}

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
    learned_room_cost: Option<f64>,
    learned_joins_per_room: Option<f64>,
    rooms_at_reading: HashMap<NodeId, u32, RandomState>,
}

/// The published fleet state plus the inputs it is rebuilt from.
pub struct Fleet {
    state: ArcSwap<FleetState>,
    inputs: Mutex<Inputs>,
    /// How nodes are checked (`[health]`), read by the checks and by the proxy when a node
    /// fails a request; a reload replaces it and the checks start again by it.
    health: watch::Sender<Arc<Health>>,
    /// Where CPU readings come from (`[prometheus]`; `None`: nowhere), read by the poll loop,
    /// which starts again when a reload replaces it.
    prometheus: watch::Sender<Arc<Option<Prometheus>>>,
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
            learned_room_cost: None,
            learned_joins_per_room: None,
            rooms_at_reading: HashMap::default(),
        };
        apply_specs(&mut inputs, specs);
        Fleet {
            state: ArcSwap::from_pointee(build(&inputs)),
            inputs: Mutex::new(inputs),
            health: watch::Sender::new(Arc::default()),
            prometheus: watch::Sender::new(Arc::default()),
        }
    }

    /// The current state; lock-free.
    pub fn load(&self) -> arc_swap::Guard<Arc<FleetState>> {
        self.state.load()
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
        self.update(|inputs| record_cpu(inputs, cpu_by_instance, read_at));
    }

    /// Records a reading that the poll loop of `source` (a value of
    /// [`prometheus_changes`](Self::prometheus_changes)) took, unless a reload has replaced
    /// `source` since: a query still in flight when `[prometheus]` was removed must not bring
    /// back the readings the removal forgot, which then would never go stale.
    pub fn set_cpu_from(
        &self,
        source: &Arc<Option<Prometheus>>,
        cpu_by_instance: HashMap<String, f64>,
        read_at: Instant,
    ) {
        self.update(|inputs| {
            // Under the inputs' lock, which `set_prometheus` takes only after replacing the
            // source: a replaced source is seen here, or its readings are forgotten after.
            if Arc::ptr_eq(source, &self.prometheus.borrow()) {
                record_cpu(inputs, cpu_by_instance, read_at);
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

    /// How nodes are checked now.
    pub fn health(&self) -> Arc<Health> {
        self.health.borrow().clone()
    }

    /// Checks nodes by `health` from now on (start-up, reload); warns of a path that tells
    /// nothing of a Jitsi node.
    pub fn set_health(&self, health: Health) {
        if let Some(why) = health.caveat() {
            tracing::warn!(path = %health.path, "health.path: {why}");
        }
        rounds::set_if_changed(&self.health, health);
    }

    /// Tells of each change of [`health`](Self::health).
    pub fn health_changes(&self) -> watch::Receiver<Arc<Health>> {
        self.health.subscribe()
    }

    /// Reads CPU from `prometheus` from now on (start-up, reload), its readings ageing out
    /// after its `max_staleness`; `None` forgets the readings, and rooms go by hashing.
    pub fn set_prometheus(&self, prometheus: Option<Prometheus>) {
        let staleness = (prometheus.as_ref()).map_or(Duration::MAX, Prometheus::max_staleness);
        let removed = prometheus.is_none();
        // The source first, then the readings (see `set_cpu_from`).
        rounds::set_if_changed(&self.prometheus, prometheus);
        self.update(|inputs| {
            inputs.max_staleness = staleness;
            if removed {
                inputs.cpu_by_instance.clear();
                inputs.cpu_read_at = None;
            }
        });
    }

    /// Tells of each change of where CPU readings come from.
    pub fn prometheus_changes(&self) -> watch::Receiver<Arc<Option<Prometheus>>> {
        self.prometheus.subscribe()
    }

    /// Time since the last good CPU reading.
    pub fn snapshot_age(&self) -> Option<Duration> {
        self.state.load().cpu_read_at.map(|at| at.elapsed())
    }

    fn update(&self, change: impl FnOnce(&mut Inputs)) {
        // A poisoned lock only means a writer panicked mid-change; the inputs are still whole.
        let mut inputs = self.inputs.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut inputs);
        self.state.store(Arc::new(build(&inputs)));
    }
}

/// A CPU reading into the inputs, and what it teaches.
fn record_cpu(inputs: &mut Inputs, cpu_by_instance: HashMap<String, f64>, read_at: Instant) {
    inputs.learned_room_cost = learn::room_cost(inputs, &cpu_by_instance);
    inputs.learned_joins_per_room = learn::joins_per_room(inputs);
    inputs.rooms_at_reading = (inputs.lives.iter())
        .map(|(id, live)| (id.clone(), live.rooms()))
        .collect();
    inputs.cpu_by_instance = cpu_by_instance;
    inputs.cpu_read_at = Some(read_at);
    for live in inputs.lives.values() {
        live.reading_taken();
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
    for spec in &specs {
        let previous = inputs.specs.iter().find(|old| old.name == spec.name);
        let live = inputs.lives.entry(NodeId::new(&spec.name)).or_default();
        if previous.is_none_or(|old| old.drain != spec.drain) {
            live.set_draining(spec.drain);
        }
    }
    inputs.specs = specs;
}

fn build(inputs: &Inputs) -> FleetState {
    let nodes: Vec<Arc<Node>> = (inputs.specs.iter())
        .map(|spec| {
            // The id the node got when it first joined: pins share its allocation.
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
    let by_name = (nodes.iter().enumerate())
        .map(|(i, n)| (n.id.clone(), i))
        .collect();
    let by_server_id = (nodes.iter().enumerate())
        .flat_map(|(i, n)| n.spec.jvb_server_ids.iter().map(move |id| (id.clone(), i)))
        .collect();
    let cpu: Vec<Option<f64>> = (inputs.specs.iter())
        .map(|spec| inputs.cpu_by_instance.get(&spec.instance).copied())
        .collect();
    let placing = (nodes.iter())
        .map(|node| Placing {
            seed: node.seed,
            weight: node.weight(),
            live: node.live.clone(),
            max_rooms: node.spec.max_rooms.unwrap_or(u32::MAX),
            max_participants: node.spec.max_participants.unwrap_or(u32::MAX),
        })
        .collect();
    FleetState {
        nodes,
        placing,
        by_name,
        by_server_id,
        lives: inputs.lives.clone(),
        cpu,
        cpu_read_at: inputs.cpu_read_at,
        max_staleness: inputs.max_staleness,
        learned_room_cost: inputs.learned_room_cost,
        learned_joins_per_room: inputs.learned_joins_per_room,
    }
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
    fn stale_cpu_is_ignored() {
        let fleet = fleet();
        let then = Instant::now();
        fleet.set_cpu(HashMap::from([("10.0.0.1:80".to_owned(), 0.3)]), then);
        assert!(fleet.load().cpu(then + Duration::from_secs(91)).is_empty());
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
    fn a_reading_survives_a_node_change() {
        let fleet = fleet();
        let now = Instant::now();
        fleet.set_cpu(HashMap::from([("10.0.0.1:80".to_owned(), 0.4)]), now);
        let read = fleet.snapshot();
        assert_eq!(read.cpu(now), &[Some(0.4), None]);
        assert_eq!(read.node_for_server_id("jvb-b").unwrap().id.as_str(), "b");
        fleet
            .put_node(NodeSpec::new("c", "http://10.0.0.3:80").unwrap())
            .unwrap();
        let grown = fleet.snapshot();
        assert_eq!(grown.index("c"), Some(2));
        assert!(grown.nodes()[0].id.same(&read.nodes()[0].id));
        assert_eq!(
            grown.cpu(now),
            &[Some(0.4), None, None],
            "the reading still applies"
        );
    }

    #[test]
    fn a_reading_of_a_removed_prometheus_is_dropped() {
        let fleet = fleet();
        let config = "url = \"http://127.0.0.1:9090\"\nquery = \"up\"";
        fleet.set_prometheus(Some(toml::from_str(config).unwrap()));
        let source = fleet.prometheus_changes().borrow().clone();
        let reading = || HashMap::from([("10.0.0.1:80".to_owned(), 0.4)]);
        let now = Instant::now();
        fleet.set_cpu_from(&source, reading(), now);
        assert_eq!(fleet.load().cpu(now), &[Some(0.4), None]);
        // The poll loop's query was in flight while `[prometheus]` was removed.
        fleet.set_prometheus(None);
        fleet.set_cpu_from(&source, reading(), now);
        assert!(
            fleet.load().cpu(now).is_empty(),
            "a removed source's reading"
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
