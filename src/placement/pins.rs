//! The pin table: room key → node, with idle expiry and a cap on its size.
//!
//! DESIGN note. The table is a [`DashMap`] keyed by the whole normalised room key, so two rooms
//! never share a pin. Chosen over `papaya` and `scc` because a pinned request is one read-locked
//! shard lookup with no allocation and no epoch bookkeeping, it gives back memory on request
//! (`shrink_to_fit`, which the sweep calls once most of the table has expired), and it is the
//! most used of the three. A map slot is 56 bytes, plus a control byte: keys up to 24 bytes
//! (nearly every room name) sit inline in a [`CompactString`], and the 32-byte pin holds a
//! shared [`NodeId`].
//!
//! The hasher is foldhash's quality variant with a per-process random seed, so clients that
//! choose room names cannot aim them at one bucket.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use compact_str::CompactString;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use foldhash::quality::RandomState;

use crate::fleet::NodeId;

/// What became of a pin write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    /// The node the room is pinned to now.
    pub node: NodeId,
    /// True when this call created the pin; false when another request had pinned it first.
    pub created: bool,
    /// The node a replaced pin pointed to (a moved room, or an expired pin overwritten).
    pub displaced: Option<NodeId>,
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

/// One room's pin: 32 bytes, so that a map slot (key and pin) is 56.
///
/// DESIGN note. The time it was pinned is kept in whole seconds and the request count in 32
/// bits (it stops at 4,294,967,295): both are only shown, and the 8 bytes they save take a
/// map slot from 64 bytes to 56 (`benches/HISTORY.md`, "A 32-byte pin"). The idle timer, which
/// decides when a pin expires, keeps milliseconds.
#[derive(Debug)]
struct Pin {
    node: NodeId,
    /// A clock value ([`Pins::now_ms`]).
    last_seen_ms: AtomicU64,
    /// The pin clock's seconds.
    pinned_at_s: u32,
    requests: AtomicU32,
}

impl Pin {
    /// A pin made at `pinned_at_ms` that has routed `requests` requests.
    fn new(node: NodeId, pinned_at_ms: u64, requests: u32) -> Pin {
        Pin {
            node,
            last_seen_ms: AtomicU64::new(pinned_at_ms),
            pinned_at_s: u32::try_from(pinned_at_ms / 1000).unwrap_or(u32::MAX),
            requests: AtomicU32::new(requests),
        }
    }

    /// Refreshes the idle timer and counts a request.
    fn used(&self, now_ms: u64) {
        self.last_seen_ms.store(now_ms, Ordering::Relaxed);
        let _stops_at_the_most =
            (self.requests)
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1));
    }
}

/// Where the pin clock starts (about two years in): a pin restored at start-up as last seen
/// minutes ago needs a time before the table was made.
const CLOCK_START_MS: u64 = 1 << 36;

/// The in-memory pin table.
pub struct Pins {
    map: DashMap<CompactString, Pin, RandomState>,
    /// Live and expired-but-unswept pins: the map's size, kept here so that checking the cap
    /// takes no shard lock.
    count: AtomicUsize,
    /// `limits.max_pins`, which a reload may change.
    max: AtomicUsize,
    idle_ms: u64,
    epoch: coarsetime::Instant,
}

impl Pins {
    /// An empty table whose pins expire after `idle` without a request, holding at most `max`.
    pub fn new(idle: Duration, max: usize) -> Pins {
        Pins {
            map: DashMap::with_hasher(RandomState::default()),
            count: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
            idle_ms: u64::try_from(idle.as_millis()).unwrap_or(u64::MAX),
            epoch: coarsetime::Instant::now(),
        }
    }

    /// Milliseconds since the table was made plus [`CLOCK_START_MS`], from the kernel's coarse
    /// clock: a few milliseconds of resolution are plenty for idle timers of minutes.
    fn now_ms(&self) -> u64 {
        coarsetime::Instant::now_without_cache_update()
            .duration_since(self.epoch)
            .as_millis()
            + CLOCK_START_MS
    }

    fn expired(&self, pin: &Pin, now_ms: u64) -> bool {
        now_ms.saturating_sub(pin.last_seen_ms.load(Ordering::Relaxed)) > self.idle_ms
    }

    /// Whether the table holds `limits.max_pins` pins: no new room may be pinned.
    pub fn full(&self) -> bool {
        self.count.load(Ordering::Relaxed) >= self.max.load(Ordering::Relaxed)
    }

    /// Holds at most `max` pins from now on (a reload). Lowered under the pins held, it keeps
    /// them; new rooms go unpinned until sweeps bring the table under it.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// The room's node handed to `f`, counting a request and refreshing its idle timer; `None`
    /// if unpinned or expired.
    pub fn with_pin<R>(&self, room: &str, f: impl FnOnce(&NodeId) -> R) -> Option<R> {
        let pin = self.map.get(room)?;
        let now = self.now_ms();
        if self.expired(&pin, now) {
            return None;
        }
        pin.used(now);
        Some(f(&pin.node))
    }

    /// Refreshes the idle timer of the room's pin if it points at `node` (a census found the
    /// room live there), without counting a request. `None` if unpinned or expired, else
    /// whether the pin is on `node`.
    pub fn keep(&self, room: &str, node: &NodeId) -> Option<bool> {
        let pin = self.map.get(room)?;
        let now = self.now_ms();
        if self.expired(&pin, now) {
            return None;
        }
        let here = pin.node == *node;
        if here {
            pin.last_seen_ms.store(now, Ordering::Relaxed);
        }
        Some(here)
    }

    /// The room's node, refreshing its idle timer; `None` if unpinned or expired.
    pub fn lookup(&self, room: &str) -> Option<NodeId> {
        self.with_pin(room, NodeId::clone)
    }

    /// Pins the room to `node` unless a live pin exists (one that `keeps` does not reject);
    /// returns the pin that holds. A new pin beyond the cap is not made (`created` false, the
    /// room's node is `node` nonetheless): the caller checks [`full`](Self::full) first.
    fn write(&self, room: &str, node: NodeId, keeps: impl Fn(&NodeId) -> bool) -> Pinned {
        let now = self.now_ms();
        match self.map.entry(CompactString::from(room)) {
            Entry::Occupied(mut held) => {
                let pin = held.get();
                if !self.expired(pin, now) && keeps(&pin.node) {
                    pin.used(now);
                    return Pinned {
                        node: pin.node.clone(),
                        created: false,
                        displaced: None,
                    };
                }
                let old = held.insert(Pin::new(node.clone(), now, 1));
                Pinned {
                    node,
                    created: true,
                    displaced: Some(old.node),
                }
            }
            Entry::Vacant(_) if self.full() => Pinned {
                node,
                created: false,
                displaced: None,
            },
            Entry::Vacant(vacant) => {
                vacant.insert(Pin::new(node.clone(), now, 1));
                self.count.fetch_add(1, Ordering::Relaxed);
                Pinned {
                    node,
                    created: true,
                    displaced: None,
                }
            }
        }
    }

    /// Pins the room to `node` unless a live pin exists; returns the pin that holds.
    pub fn pin_if_absent(&self, room: &str, node: NodeId) -> Pinned {
        self.write(room, node, |_| true)
    }

    /// Moves the room from `stale` to `node`, unless someone already moved it; returns the pin
    /// that holds.
    pub fn repin(&self, room: &str, stale: &NodeId, node: NodeId) -> Pinned {
        self.write(room, node, |held| held != stale)
    }

    /// Pins the room to `node` whatever it was (operators fixing a room); returns the old node
    /// of a live pin.
    pub fn set(&self, room: &str, node: NodeId) -> Option<NodeId> {
        let now = self.now_ms();
        let old = self
            .map
            .insert(CompactString::from(room), Pin::new(node, now, 0));
        match old {
            None => {
                self.count.fetch_add(1, Ordering::Relaxed);
                None
            }
            Some(old) => Some(old.node),
        }
    }

    /// Forgets a room's pin; the node of the pin removed.
    pub fn unpin(&self, room: &str) -> Option<NodeId> {
        let (_, pin) = self.map.remove(room)?;
        self.count.fetch_sub(1, Ordering::Relaxed);
        Some(pin.node)
    }

    /// Drops pins idle longer than the timeout, telling `dropped` each one's node; returns how
    /// many. Gives the memory back when the table holds under a quarter of its capacity.
    pub fn sweep(&self, mut dropped: impl FnMut(&NodeId)) -> usize {
        let now = self.now_ms();
        let mut removed = 0;
        self.map.retain(|_, pin| {
            let expired = self.expired(pin, now);
            if expired {
                dropped(&pin.node);
                removed += 1;
            }
            !expired
        });
        self.count.fetch_sub(removed, Ordering::Relaxed);
        if removed > 0 && self.map.len() < self.map.capacity() / 4 {
            self.map.shrink_to_fit();
        }
        removed
    }

    /// Pins in the table (expired ones count until swept).
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether no room is pinned.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rooms the table has slots for now (its memory, with [`len`](Self::len)).
    pub fn capacity(&self) -> usize {
        self.map.capacity()
    }

    fn info_of(&self, room: &str, pin: &Pin, now: u64) -> PinInfo {
        let ago = |ms: u64| Duration::from_millis(now.saturating_sub(ms));
        PinInfo {
            room: room.to_owned(),
            node: pin.node.clone(),
            pinned_for: ago(u64::from(pin.pinned_at_s) * 1000),
            idle: ago(pin.last_seen_ms.load(Ordering::Relaxed)),
            requests: pin.requests.load(Ordering::Relaxed).into(),
        }
    }

    /// Every live pin.
    pub fn export(&self) -> Vec<PinInfo> {
        let now = self.now_ms();
        (self.map.iter())
            .filter(|entry| !self.expired(entry.value(), now))
            .map(|entry| self.info_of(entry.key(), entry.value(), now))
            .collect()
    }

    /// One room's pin, without counting as a request.
    pub fn info(&self, room: &str) -> Option<PinInfo> {
        let now = self.now_ms();
        let pin = self.map.get(room)?;
        (!self.expired(&pin, now)).then(|| self.info_of(room, &pin, now))
    }

    /// Puts back a pin that was idle for `idle` (from a snapshot); false if the room is pinned,
    /// the pin has expired meanwhile, or the table is full.
    pub fn restore(&self, room: &str, node: NodeId, idle: Duration) -> bool {
        let now = self.now_ms();
        let seen = now.saturating_sub(u64::try_from(idle.as_millis()).unwrap_or(u64::MAX));
        if now - seen > self.idle_ms || self.full() {
            return false;
        }
        match self.map.entry(CompactString::from(room)) {
            Entry::Occupied(_) => false,
            Entry::Vacant(vacant) => {
                vacant.insert(Pin::new(node, seen, 0));
                self.count.fetch_add(1, Ordering::Relaxed);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn id(name: &str) -> NodeId {
        NodeId::new(name)
    }

    #[test]
    fn a_map_slot_is_56_bytes() {
        assert_eq!(std::mem::size_of::<(CompactString, Pin)>(), 56);
    }

    #[test]
    fn a_pins_request_count_stops_at_its_most() {
        let pins = Pins::new(Duration::from_secs(60), 100);
        pins.pin_if_absent("room", id("a"));
        pins.map
            .get("room")
            .unwrap()
            .requests
            .store(u32::MAX - 1, Ordering::Relaxed);
        for _ in 0..3 {
            assert!(pins.lookup("room").is_some());
        }
        assert_eq!(pins.info("room").unwrap().requests, u64::from(u32::MAX));
    }

    #[test]
    fn insert_if_absent_keeps_the_first() {
        let pins = Pins::new(Duration::from_secs(60), 100);
        let first = pins.pin_if_absent("room", id("a"));
        assert!(first.created);
        let second = pins.pin_if_absent("room", id("b"));
        assert_eq!((second.node.as_str(), second.created), ("a", false));
        assert_eq!(pins.lookup("room").unwrap().as_str(), "a");
    }

    #[test]
    fn racing_first_visits_agree() {
        let pins = Arc::new(Pins::new(Duration::from_secs(60), 100_000));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let pins = pins.clone();
                std::thread::spawn(move || {
                    (0..2_000)
                        .map(|r| pins.pin_if_absent(&format!("r{r}"), id(&format!("n{t}"))))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let results: Vec<Vec<Pinned>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        for r in 0..2_000 {
            let nodes: Vec<&str> = results.iter().map(|res| res[r].node.as_str()).collect();
            assert!(nodes.iter().all(|n| *n == nodes[0]), "room {r}: {nodes:?}");
            assert_eq!(results.iter().filter(|res| res[r].created).count(), 1);
        }
        assert_eq!(pins.len(), 2_000);
    }

    #[test]
    fn idle_pins_expire() {
        let pins = Pins::new(Duration::from_millis(30), 100);
        pins.pin_if_absent("room", id("a"));
        std::thread::sleep(Duration::from_millis(80));
        assert!(pins.lookup("room").is_none());
        let again = pins.pin_if_absent("room", id("b"));
        assert_eq!(again.displaced.as_ref().map(NodeId::as_str), Some("a"));
        let mut dropped = Vec::new();
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(pins.sweep(|node| dropped.push(node.clone())), 1);
        assert_eq!(dropped, [id("b")]);
        assert!(pins.is_empty());
    }

    #[test]
    fn lookups_keep_a_pin_alive() {
        let pins = Pins::new(Duration::from_millis(200), 100);
        pins.pin_if_absent("room", id("a"));
        for _ in 0..6 {
            std::thread::sleep(Duration::from_millis(60));
            assert!(pins.lookup("room").is_some());
        }
        assert_eq!(
            pins.info("room").unwrap().requests,
            7,
            "the first and six more"
        );
    }

    #[test]
    fn export_and_restore_keep_idle_time() {
        let pins = Pins::new(Duration::from_secs(600), 100);
        assert!(pins.restore("old", id("a"), Duration::from_secs(300)));
        assert!(
            !pins.restore("old", id("b"), Duration::ZERO),
            "pinned already"
        );
        assert!(!pins.restore("gone", id("a"), Duration::from_secs(601)));
        let info = pins.info("old").unwrap();
        assert!(info.idle >= Duration::from_secs(300), "{info:?}");
        assert_eq!(pins.export().len(), 1);
    }

    #[test]
    fn repin_moves_only_from_the_stale_node() {
        let pins = Pins::new(Duration::from_secs(60), 100);
        pins.pin_if_absent("room", id("a"));
        let moved = pins.repin("room", &id("a"), id("b"));
        assert_eq!(
            (moved.node.as_str(), moved.created, moved.displaced),
            ("b", true, Some(id("a")))
        );
        // A second request that saw the old pin finds the room moved already.
        let late = pins.repin("room", &id("a"), id("c"));
        assert_eq!((late.node.as_str(), late.created), ("b", false));
    }

    #[test]
    fn rooms_whose_hashes_collide_keep_their_own_pins() {
        // Exact keys: rooms differing by one character, many of them, each keep their node.
        let pins = Pins::new(Duration::from_secs(60), 1_000_000);
        for r in 0..50_000 {
            pins.pin_if_absent(&format!("room-{r}"), id(if r % 2 == 0 { "a" } else { "b" }));
        }
        for r in 0..50_000 {
            let node = pins.lookup(&format!("room-{r}")).unwrap();
            assert_eq!(node.as_str(), if r % 2 == 0 { "a" } else { "b" });
        }
    }

    #[test]
    fn a_full_table_pins_no_new_room_and_keeps_its_pins() {
        let pins = Pins::new(Duration::from_secs(60), 3);
        for room in ["a", "b", "c"] {
            assert!(pins.pin_if_absent(room, id("n")).created);
        }
        assert!(pins.full());
        let refused = pins.pin_if_absent("d", id("n"));
        assert!(!refused.created);
        assert!(pins.lookup("d").is_none());
        assert_eq!(pins.len(), 3);
        assert!(!pins.restore("e", id("n"), Duration::ZERO));
        // Moving a pinned room is no new pin.
        assert!(pins.repin("a", &id("n"), id("m")).created);
        pins.unpin("b");
        assert!(pins.pin_if_absent("d", id("n")).created);
        // A reload raises the cap, then lowers it under the pins held: they stay.
        pins.set_max(4);
        assert!(pins.pin_if_absent("e", id("n")).created);
        pins.set_max(2);
        assert!(!pins.pin_if_absent("f", id("n")).created);
        assert_eq!(pins.len(), 4);
        assert!(pins.lookup("e").is_some());
    }

    #[test]
    fn sweeps_give_memory_back() {
        let pins = Pins::new(Duration::from_millis(100), 1_000_000);
        for r in 0..100_000 {
            pins.pin_if_absent(&format!("r{r}"), id("a"));
        }
        let grown = pins.capacity();
        pins.pin_if_absent("kept", id("a"));
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(50));
            pins.lookup("kept");
        }
        pins.sweep(|_| {});
        assert_eq!(pins.len(), 1);
        assert!(
            pins.capacity() < grown / 10,
            "{} slots of {grown} kept",
            pins.capacity()
        );
    }

    #[test]
    fn sweep_drops_only_idle_pins() {
        let pins = Pins::new(Duration::from_millis(100), 100);
        pins.pin_if_absent("idle", id("a"));
        pins.pin_if_absent("busy", id("b"));
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(50));
            pins.lookup("busy");
        }
        let mut dropped = Vec::new();
        assert_eq!(pins.sweep(|n| dropped.push(n.clone())), 1);
        assert_eq!(dropped, [id("a")]);
        assert_eq!(pins.lookup("busy").unwrap().as_str(), "b");
    }
}
