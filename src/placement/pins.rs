//! The pin table: room key → node, with idle expiry.
//!
//! [`PinStore`] is the small interface routing needs; [`MemoryPins`] backs it with a sharded
//! concurrent map (`dashmap`), so a lookup takes one shard's read lock, never a global one, and
//! refreshes the pin's idle timer with an atomic store. A shared store (Redis, for replicas) will sit
//! behind the same trait with this table as its local cache.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use compact_str::CompactString;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use foldhash::fast::RandomState;

use crate::fleet::NodeId;

/// What became of an insert-if-absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    /// The node the room is pinned to now.
    pub node: NodeId,
    /// True when this call created the pin; false when another request had pinned it first.
    pub created: bool,
    /// The node a replaced pin pointed to (a moved room, or an expired pin overwritten).
    pub displaced: Option<NodeId>,
}

impl Pinned {
    fn kept(node: NodeId) -> Pinned {
        Pinned {
            node,
            created: false,
            displaced: None,
        }
    }

    fn made(node: NodeId, displaced: Option<NodeId>) -> Pinned {
        Pinned {
            node,
            created: true,
            displaced,
        }
    }
}

/// What is known of one pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinInfo {
    /// The room key.
    pub room: String,
    /// Its node.
    pub node: NodeId,
    /// Time since it was pinned.
    pub pinned_for: Duration,
    /// Time since its last request.
    pub idle: Duration,
    /// Requests routed by this pin.
    pub requests: u64,
}

/// Where a pin's node stood in the fleet state that last routed the pin: routing checks it
/// against the state in hand (one pointer comparison) before it looks the node up by name, and
/// sets it again when it had to. Only a hint: a stale one costs that lookup, never a wrong node.
#[derive(Debug)]
pub struct IndexHint(AtomicU32);

impl Default for IndexHint {
    fn default() -> IndexHint {
        IndexHint::new()
    }
}

impl IndexHint {
    const NONE: u32 = u32::MAX;

    /// No hint yet.
    pub fn new() -> IndexHint {
        IndexHint(AtomicU32::new(IndexHint::NONE))
    }

    /// The index last set, if any.
    pub fn get(&self) -> Option<usize> {
        let at = self.0.load(Ordering::Relaxed);
        (at != IndexHint::NONE).then_some(at as usize)
    }

    /// Remembers `index` (an index too large to keep is not kept).
    pub fn set(&self, index: usize) {
        self.0.store(
            u32::try_from(index).unwrap_or(IndexHint::NONE),
            Ordering::Relaxed,
        );
    }
}

/// A pin table.
pub trait PinStore: Send + Sync {
    /// The room's node, refreshing its idle timer; `None` if unpinned or expired.
    fn lookup(&self, room: &str) -> Option<NodeId> {
        let mut node = None;
        self.lookup_with(room, &mut |id, _| node = Some(id.clone()));
        node
    }
    /// Like [`lookup`](Self::lookup), but hands the node to `found` in place instead of cloning
    /// it: the request path then touches no reference count shared by every room of that node
    /// (a cache line all cores would otherwise keep taking from each other). With it comes the
    /// pin's [`IndexHint`]. False if unpinned.
    fn lookup_with(&self, room: &str, found: &mut dyn FnMut(&NodeId, &IndexHint)) -> bool;
    /// Pins the room to `node` unless a live pin exists; returns the pin that holds.
    fn pin_if_absent(&self, room: &str, node: NodeId) -> Pinned;
    /// Moves the room from `stale` to `node`, unless someone already moved it; returns the pin that holds.
    fn repin(&self, room: &str, stale: &NodeId, node: NodeId) -> Pinned;
    /// Forgets a room's pin.
    fn unpin(&self, room: &str) -> Option<NodeId>;
    /// Drops pins idle longer than the timeout, telling `dropped` each one's node; returns how many.
    fn sweep(&self, dropped: &mut dyn FnMut(&NodeId)) -> usize;
    /// Live pins (approximate while sweeping).
    fn len(&self) -> usize;
    /// Every live pin.
    fn export(&self) -> Vec<PinInfo>;
    /// One room's pin, without counting as a request.
    fn info(&self, room: &str) -> Option<PinInfo>;
    /// Pins the room to `node` whatever it was (operators fixing a room); returns the old node.
    fn set(&self, room: &str, node: NodeId) -> Option<NodeId>;
    /// Puts back a pin that was idle for `idle` (from a snapshot); false if the room is pinned.
    fn restore(&self, room: &str, node: NodeId, idle: Duration) -> bool;
    /// Whether no room is pinned.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Shards of the pin table. dashmap's default (4 × cores) leaves few shard locks that every
/// core keeps taking from the others; many small shards keep lookups on different cores apart.
const SHARDS: usize = 512;

/// One pin: the room and everything known of it in one cache line, which is the table's slot
/// (the table holds pins as keys, with no value). A lookup with many pins costs what its cache
/// misses cost; a slot that straddled two lines would take two.
#[repr(align(64))]
struct Pin {
    /// Inline up to 24 bytes (nearly every room name), so a lookup chases no pointer.
    room: CompactString,
    node: NodeId,
    pinned_at_ms: u64,
    last_seen_ms: AtomicU64,
    /// Saturates at about 4 billion: over a year of a hundred requests a second.
    requests: AtomicU32,
    hint: IndexHint,
}

// One line exactly: a field added to `Pin` must not push it to two.
const _: () = assert!(std::mem::size_of::<Pin>() == 64);

/// Pins are found by room name: they hash and compare as their room's `str`.
impl std::hash::Hash for Pin {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.room.as_str().hash(state);
    }
}

impl PartialEq for Pin {
    fn eq(&self, other: &Pin) -> bool {
        self.room == other.room
    }
}

impl Eq for Pin {}

impl std::borrow::Borrow<str> for Pin {
    fn borrow(&self) -> &str {
        &self.room
    }
}

/// Where the pin clock starts (about two years in): a pin restored at start-up as last seen
/// minutes ago needs a time before the table was made, or it would come back as just seen and
/// outlive its idle timeout.
const CLOCK_START_MS: u64 = 1 << 36;

/// The in-memory pin table.
pub struct MemoryPins {
    map: DashMap<Pin, (), RandomState>,
    idle_ms: u64,
    epoch: coarsetime::Instant,
}

impl MemoryPins {
    /// An empty table whose pins expire after `idle` without a request.
    pub fn new(idle: Duration) -> MemoryPins {
        MemoryPins {
            map: DashMap::with_hasher_and_shard_amount(RandomState::default(), SHARDS),
            idle_ms: u64::try_from(idle.as_millis()).unwrap_or(u64::MAX),
            epoch: coarsetime::Instant::now(),
        }
    }

    /// Milliseconds since the table was made plus [`CLOCK_START_MS`], from the kernel's coarse
    /// clock: it is read on every pinned request, and a few milliseconds of resolution are plenty
    /// for idle timers of minutes.
    fn now_ms(&self) -> u64 {
        coarsetime::Instant::now()
            .duration_since(self.epoch)
            .as_millis()
            + CLOCK_START_MS
    }

    fn expired(&self, pin: &Pin, now_ms: u64) -> bool {
        now_ms.saturating_sub(pin.last_seen_ms.load(Ordering::Relaxed)) > self.idle_ms
    }

    fn fresh(&self, room: &str, node: NodeId, now_ms: u64) -> Pin {
        Pin {
            room: room.into(),
            node,
            pinned_at_ms: now_ms,
            last_seen_ms: AtomicU64::new(now_ms),
            requests: AtomicU32::new(1),
            hint: IndexHint::new(),
        }
    }

    fn describe(pin: &Pin, now_ms: u64) -> PinInfo {
        PinInfo {
            room: pin.room.to_string(),
            node: pin.node.clone(),
            pinned_for: Duration::from_millis(now_ms.saturating_sub(pin.pinned_at_ms)),
            idle: Duration::from_millis(
                now_ms.saturating_sub(pin.last_seen_ms.load(Ordering::Relaxed)),
            ),
            requests: u64::from(pin.requests.load(Ordering::Relaxed)),
        }
    }
}

impl PinStore for MemoryPins {
    fn lookup_with(&self, room: &str, found: &mut dyn FnMut(&NodeId, &IndexHint)) -> bool {
        let Some(entry) = self.map.get(room) else {
            return false;
        };
        let pin = entry.key();
        let now = self.now_ms();
        if self.expired(pin, now) {
            return false;
        }
        pin.last_seen_ms.store(now, Ordering::Relaxed);
        // A load and a store, not an atomic add: the count is for operators, and an add is a full
        // barrier that keeps the CPU from overlapping one lookup's cache misses with the next.
        // Two requests of the same room at the same instant may count once.
        let requests = pin.requests.load(Ordering::Relaxed);
        pin.requests
            .store(requests.saturating_add(1), Ordering::Relaxed);
        found(&pin.node, &pin.hint);
        true
    }

    fn pin_if_absent(&self, room: &str, node: NodeId) -> Pinned {
        let now = self.now_ms();
        match self.map.entry(self.fresh(room, node.clone(), now)) {
            Entry::Occupied(held) if self.expired(held.key(), now) => {
                let (old, ()) = held.replace_entry(());
                Pinned::made(node, Some(old.node))
            }
            Entry::Occupied(held) => {
                held.key().last_seen_ms.store(now, Ordering::Relaxed);
                Pinned::kept(held.key().node.clone())
            }
            Entry::Vacant(slot) => {
                slot.insert(());
                Pinned::made(node, None)
            }
        }
    }

    fn repin(&self, room: &str, stale: &NodeId, node: NodeId) -> Pinned {
        let now = self.now_ms();
        match self.map.entry(self.fresh(room, node.clone(), now)) {
            Entry::Occupied(held)
                if held.key().node != *stale && !self.expired(held.key(), now) =>
            {
                Pinned::kept(held.key().node.clone())
            }
            Entry::Occupied(held) => {
                let (old, ()) = held.replace_entry(());
                Pinned::made(node, Some(old.node))
            }
            Entry::Vacant(slot) => {
                slot.insert(());
                Pinned::made(node, None)
            }
        }
    }

    fn unpin(&self, room: &str) -> Option<NodeId> {
        self.map.remove(room).map(|(pin, ())| pin.node)
    }

    fn sweep(&self, dropped: &mut dyn FnMut(&NodeId)) -> usize {
        let now = self.now_ms();
        let mut count = 0;
        self.map.retain(|pin, ()| {
            let keep = !self.expired(pin, now);
            if !keep {
                dropped(&pin.node);
                count += 1;
            }
            keep
        });
        count
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn export(&self) -> Vec<PinInfo> {
        let now = self.now_ms();
        self.map
            .iter()
            .filter(|entry| !self.expired(entry.key(), now))
            .map(|entry| MemoryPins::describe(entry.key(), now))
            .collect()
    }

    fn info(&self, room: &str) -> Option<PinInfo> {
        let now = self.now_ms();
        let entry = self.map.get(room)?;
        let pin = entry.key();
        (!self.expired(pin, now)).then(|| MemoryPins::describe(pin, now))
    }

    fn set(&self, room: &str, node: NodeId) -> Option<NodeId> {
        let now = self.now_ms();
        let old = match self.map.entry(self.fresh(room, node, now)) {
            Entry::Occupied(held) => held.replace_entry(()).0,
            Entry::Vacant(slot) => {
                slot.insert(());
                return None;
            }
        };
        (!self.expired(&old, now)).then_some(old.node)
    }

    fn restore(&self, room: &str, node: NodeId, idle: Duration) -> bool {
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        if idle_ms > self.idle_ms {
            return false;
        }
        // A pin restored as if last seen `idle` ago expires on the same schedule it had.
        let now = self.now_ms();
        let pin = self.fresh(room, node, now);
        pin.last_seen_ms
            .store(now.saturating_sub(idle_ms), Ordering::Relaxed);
        match self.map.entry(pin) {
            Entry::Occupied(_) => false,
            Entry::Vacant(slot) => {
                slot.insert(());
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn insert_if_absent_keeps_the_first() {
        let pins = MemoryPins::new(Duration::from_secs(60));
        let a = NodeId::new("a");
        assert!(pins.pin_if_absent("r", a.clone()).created);
        let second = pins.pin_if_absent("r", NodeId::new("b"));
        assert_eq!(second, Pinned::kept(a.clone()));
        assert_eq!(pins.lookup("r"), Some(a));
    }

    #[test]
    fn racing_first_visits_agree() {
        let pins = Arc::new(MemoryPins::new(Duration::from_secs(60)));
        let winners: Vec<NodeId> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let pins = pins.clone();
                    s.spawn(move || {
                        pins.pin_if_absent("room", NodeId::new(&format!("n{i}")))
                            .node
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(winners.windows(2).all(|w| w[0] == w[1]), "{winners:?}");
    }

    #[test]
    fn idle_pins_expire() {
        let pins = MemoryPins::new(Duration::from_millis(30));
        pins.pin_if_absent("r", NodeId::new("a"));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(pins.lookup("r"), None);
        let replaced = pins.pin_if_absent("r", NodeId::new("b"));
        assert_eq!(
            replaced,
            Pinned::made(NodeId::new("b"), Some(NodeId::new("a")))
        );
        std::thread::sleep(Duration::from_millis(60));
        let mut gone = Vec::new();
        assert_eq!(pins.sweep(&mut |node| gone.push(node.clone())), 1);
        assert_eq!(gone, [NodeId::new("b")]);
        assert!(pins.is_empty());
    }

    #[test]
    fn lookups_keep_a_pin_alive() {
        let pins = MemoryPins::new(Duration::from_millis(80));
        pins.pin_if_absent("r", NodeId::new("a"));
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(30));
            assert!(pins.lookup("r").is_some());
        }
    }

    #[test]
    fn export_and_restore_keep_idle_time() {
        let pins = MemoryPins::new(Duration::from_secs(60));
        pins.pin_if_absent("a", NodeId::new("n1"));
        let saved = pins.export();
        assert_eq!(saved.len(), 1);
        assert_eq!((saved[0].room.as_str(), saved[0].requests), ("a", 1));
        pins.lookup("a");
        assert_eq!(pins.info("a").unwrap().requests, 2);
        assert_eq!(pins.set("a", NodeId::new("n9")), Some(NodeId::new("n1")));
        assert_eq!(pins.info("a").unwrap().node, NodeId::new("n9"));
        let fresh = MemoryPins::new(Duration::from_secs(60));
        assert!(fresh.restore("a", NodeId::new("n1"), Duration::from_secs(59)));
        assert!(
            !fresh.restore("a", NodeId::new("n2"), Duration::ZERO),
            "never overwrites"
        );
        assert!(
            !fresh.restore("b", NodeId::new("n1"), Duration::from_secs(61)),
            "already expired"
        );
        let idle = fresh.info("a").unwrap().idle;
        assert!(idle >= Duration::from_secs(59), "restored idle: {idle:?}");
        assert_eq!(fresh.lookup("a"), Some(NodeId::new("n1")));
        assert!(fresh.info("a").unwrap().idle < Duration::from_secs(1));
    }

    #[test]
    fn repin_moves_only_from_the_stale_node() {
        let pins = MemoryPins::new(Duration::from_secs(60));
        let (a, b, c) = (NodeId::new("a"), NodeId::new("b"), NodeId::new("c"));
        pins.pin_if_absent("r", a.clone());
        assert_eq!(
            pins.repin("r", &a, b.clone()),
            Pinned::made(b.clone(), Some(a.clone()))
        );
        // A second request that also saw `a` must not move the room again.
        assert_eq!(pins.repin("r", &a, c), Pinned::kept(b));
        assert_eq!(pins.unpin("r").map(|n| n.to_string()), Some("b".into()));
    }
}
