//! The pin table: room key → node, with idle expiry.
//!
//! [`PinStore`] is the small interface routing needs; [`MemoryPins`] backs it with a lock-free
//! index of 16-byte slots (see `placement/pin_index.rs`): a lookup takes no lock, reads
//! one cache line, and refreshes the pin's idle timer with a plain atomic store. Writers take a
//! lock per shard of rooms. Pins shared by replicas (`placement::shared`) do not sit behind this
//! trait: it stays synchronous for the request path, and the Redis store is asked beside it, only
//! when this table has no usable pin (behind the trait, with a local cache, it would put an
//! `await` on every pinned request for nothing).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::{ArcSwap, Cache};
use compact_str::CompactString;
use foldhash::fast::RandomState;

use super::pin_index::{self, Fingerprint, Numbers, Place, Table, EMPTY, GONE};
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

/// Where a pinned node stood in the fleet state that last routed one of its rooms (one hint per
/// node, shared by its pins): routing checks it against the state in hand (a pointer comparison,
/// then the name) before it looks the node up by name, and sets it again when it had to. Only a
/// hint: a stale one costs that lookup, never a wrong node.
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
    /// [`IndexHint`] of the pin's node. False if unpinned.
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

/// Shards of the pin table's writers (a power of two). A writer holds its room's shard while it
/// reads and changes the room's slot; readers take no lock at all.
const SHARDS: usize = 64;

/// The smallest index (64 KiB).
const MIN_SLOTS: usize = 4096;

/// Where the pin clock starts (about two years in): a pin restored at start-up as last seen
/// minutes ago needs a time before the table was made, or it would come back as just seen and
/// outlive its idle timeout.
const CLOCK_START_MS: u64 = 1 << 36;

/// A record of the shard's log: what routing never reads of a pin (its name and when it was
/// made), or that the pin with this fingerprint was removed.
struct Cold {
    print: Fingerprint,
    room: CompactString,
    /// When the pin was made; [`Cold::REMOVED`] in a removal's record.
    pinned_at_ms: u64,
}

impl Cold {
    const REMOVED: u64 = u64::MAX;

    fn removal(print: Fingerprint) -> Cold {
        Cold {
            print,
            room: CompactString::default(),
            pinned_at_ms: Cold::REMOVED,
        }
    }

    fn is_removal(&self) -> bool {
        self.pinned_at_ms == Cold::REMOVED
    }
}

/// One shard's rooms and bookkeeping, behind its writers' lock.
struct Rooms {
    /// The shard's pins as they were made and removed, newest last: a fingerprint's newest
    /// record is its pin's, or a removal when the index holds no pin with it. Appending costs no
    /// cache miss (a map of a million names would take two per new room); older records stay
    /// until the log is twice the shard's live pins, when [`Rooms::compact`] drops them, reading
    /// the log alone (looking each record up in the index would cost a miss per record).
    log: Vec<Cold>,
    /// Pins of this shard in the index: those whose fingerprint's newest record is a pin's.
    live: usize,
    /// Scratch for [`Rooms::compact`], kept for its capacity.
    seen: HashSet<Fingerprint, RandomState>,
    /// Empty slots this shard's writers took since the index was last built: the index is
    /// rebuilt when any shard has taken its share of 60 % of the slots.
    took_empty: usize,
}

impl Rooms {
    /// Appends a record, then compacts the log if it is twice the live pins (and a little).
    fn record(&mut self, cold: Cold) {
        self.log.push(cold);
        if self.log.len() > 2 * self.live + 1024 {
            self.compact();
        }
    }

    /// Notes that the pin with this fingerprint left the index.
    fn removed(&mut self, print: Fingerprint) {
        self.live = self.live.saturating_sub(1);
        self.record(Cold::removal(print));
    }

    /// Keeps only the newest record of each fingerprint, and of those only pins'.
    fn compact(&mut self) {
        let Rooms { log, seen, .. } = self;
        seen.clear();
        log.reverse();
        log.retain(|cold| seen.insert(cold.print) && !cold.is_removal());
        log.reverse();
        debug_assert_eq!(self.live, self.log.len(), "live pins and their records");
    }
}

/// What a shard's lock guards: its rooms, and the index as it stands while the lock is held
/// (the index changes only with every shard held), read without `arc-swap`'s bookkeeping.
struct Writer {
    index: Arc<Table>,
    rooms: Rooms,
}

#[repr(align(64))]
struct Shard(Mutex<Writer>);

impl Shard {
    fn lock(&self) -> MutexGuard<'_, Writer> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a writer does with a room's slot once it has seen it.
enum Change<'n> {
    /// Leave it.
    Keep,
    /// Pin the room to `node`, with this data word, as a new pin.
    Put { node: &'n NodeId, data: u64 },
    /// Remove the pin.
    Remove,
}

/// A taken slot as a writer saw it.
struct Held<'t> {
    node: &'t NodeId,
    data: u64,
}

/// What a thread keeps of the pin table it last used.
struct ThreadView {
    /// Its handle on the index: checking it for a newer index is one plain load, where an
    /// `arc-swap` guard takes two atomic read-modify-writes (each a full barrier on x86) per
    /// lookup. It keeps the index alive until the thread's next lookup, so a thread that stops
    /// routing may hold one replaced index.
    index: Cache<Arc<ArcSwap<Table>>, Arc<Table>>,
    /// Node numbers this thread has used, by the id's address (it holds the id, so the address
    /// is not reused): a few kilobytes that stay in this core's cache, where a shared map would
    /// be a lock or a line the cores take from each other.
    numbers: HashMap<usize, (NodeId, u16), RandomState>,
}

/// A thread keeps numbers for at most this many ids, then starts afresh.
const THREAD_NUMBERS: usize = 4096;

thread_local! {
    static VIEW: RefCell<Option<ThreadView>> = const { RefCell::new(None) };
}

/// The in-memory pin table: a lock-free index (see `placement/pin_index.rs`) that
/// routing reads, and per-shard cold records (names, pin times) that writers keep beside it.
///
/// The index is published with `arc-swap`. It grows (or sheds its tombstones, or shrinks after
/// a sweep) by a writer that takes every shard, copies the taken slots into a new table and
/// publishes it; readers go on reading the old one meanwhile, and an idle-clock update they make to it in that moment is
/// lost (the pin then looks idle since a few milliseconds earlier).
pub struct MemoryPins {
    index: Arc<ArcSwap<Table>>,
    shards: Box<[Shard]>,
    numbers: Numbers,
    hasher: foldhash::quality::RandomState,
    /// Bits of the hash kept: all of them, except in tests that want rooms to collide.
    spread: u64,
    idle_ms: u64,
    epoch: coarsetime::Instant,
    numbers_exhausted: AtomicBool,
    lost: NodeId,
}

impl MemoryPins {
    /// An empty table whose pins expire after `idle` without a request.
    pub fn new(idle: Duration) -> MemoryPins {
        let index = Arc::new(Table::with_slots(MIN_SLOTS));
        MemoryPins {
            index: Arc::new(ArcSwap::new(index.clone())),
            shards: (0..SHARDS)
                .map(|_| {
                    Shard(Mutex::new(Writer {
                        index: index.clone(),
                        rooms: Rooms {
                            log: Vec::new(),
                            live: 0,
                            seen: HashSet::default(),
                            took_empty: 0,
                        },
                    }))
                })
                .collect(),
            numbers: Numbers::default(),
            hasher: foldhash::quality::RandomState::default(),
            spread: u64::MAX,
            idle_ms: u64::try_from(idle.as_millis()).unwrap_or(u64::MAX),
            epoch: coarsetime::Instant::now(),
            numbers_exhausted: AtomicBool::new(false),
            lost: NodeId::new(""),
        }
    }

    /// A table whose fingerprints keep only the hash bits in `spread`, so that rooms collide.
    #[cfg(test)]
    fn colliding(idle: Duration, spread: u64) -> MemoryPins {
        MemoryPins {
            spread,
            ..MemoryPins::new(idle)
        }
    }

    fn fingerprint(&self, room: &str) -> Fingerprint {
        Fingerprint::of(self.hasher.hash_one(room) & self.spread)
    }

    /// Milliseconds since the table was made plus [`CLOCK_START_MS`], from the kernel's coarse
    /// clock: it is read on every pinned request, and a few milliseconds of resolution are plenty
    /// for idle timers of minutes. Read without `coarsetime`'s cache update: `Instant::now`
    /// also stores the time in a global that shares its cache line with the room hasher's
    /// seed, so every request would take that line from the other cores and then wait for it
    /// back (a fifth of a pinned lookup's time, before this was seen).
    fn now_ms(&self) -> u64 {
        coarsetime::Instant::now_without_cache_update()
            .duration_since(self.epoch)
            .as_millis()
            + CLOCK_START_MS
    }

    fn expired(&self, data: u64, now_ms: u64) -> bool {
        now_ms.saturating_sub(pin_index::last_seen(data)) > self.idle_ms
    }

    fn node(&self, key: u64) -> &NodeId {
        // A number's id is set before the number is handed out, so `lost` is never used; were
        // it, no fleet has a node of that name, and routing would move the room.
        self.numbers
            .get(pin_index::number(key))
            .map_or(&self.lost, |(id, _)| id)
    }

    /// Runs `f` on this thread's view of this table (made afresh if it last used another).
    /// `None` only if called from within `f`.
    fn with_view<R>(&self, f: impl FnOnce(&mut ThreadView) -> R) -> Option<R> {
        VIEW.with(|view| {
            let mut view = view.try_borrow_mut().ok()?;
            let view = match &mut *view {
                Some(view) if std::ptr::eq(view.index.arc_swap(), &*self.index) => view,
                other => other.insert(ThreadView {
                    index: Cache::new(self.index.clone()),
                    numbers: HashMap::default(),
                }),
            };
            Some(f(view))
        })
    }

    fn number(&self, node: &NodeId) -> Option<u16> {
        let address = node.as_str().as_ptr() as usize;
        let cached = self.with_view(|view| view.numbers.get(&address).map(|(_, number)| *number));
        if let Some(number) = cached.flatten() {
            return Some(number);
        }
        let number = self.numbers.number(node);
        match number {
            Some(number) => {
                self.with_view(|view| {
                    if view.numbers.len() >= THREAD_NUMBERS {
                        view.numbers.clear();
                    }
                    view.numbers.insert(address, (node.clone(), number));
                });
            }
            None if !self.numbers_exhausted.swap(true, Ordering::Relaxed) => tracing::error!(
                node = %node,
                "the pin table has numbered {} node names since start-up and pins no more \
                 rooms to new names; restart the router",
                pin_index::MAX_NODES
            ),
            None => {}
        }
        number
    }

    /// Runs `decide` on the room's slot with the room's shard held, and carries out its change.
    /// `decide` may run more than once (when another room takes the free slot it was shown).
    fn write<'n, R>(
        &self,
        room: &str,
        mut decide: impl FnMut(Option<Held<'_>>, u64) -> (Change<'n>, R),
    ) -> R {
        let print = self.fingerprint(room);
        loop {
            let mut writer = self.shards[print.shard(SHARDS)].lock();
            let Writer { index, rooms } = &mut *writer;
            let index: &Table = index;
            let now = self.now_ms();
            let (slot, seen, change, result) = match index.place(print) {
                Place::Full => {
                    drop(writer);
                    self.rebuild(true);
                    continue;
                }
                Place::Taken(slot, key) => {
                    let held = Held {
                        node: self.node(key),
                        data: slot.data.load(Ordering::Acquire),
                    };
                    let (change, result) = decide(Some(held), now);
                    (slot, key, change, result)
                }
                Place::Free(slot, seen) => {
                    let (change, result) = decide(None, now);
                    (slot, seen, change, result)
                }
            };
            match change {
                Change::Keep => return result,
                Change::Remove => {
                    if seen != EMPTY && seen != GONE {
                        slot.key.store(GONE, Ordering::Release);
                        slot.data.store(0, Ordering::Relaxed);
                        rooms.removed(print);
                    }
                    return result;
                }
                Change::Put { node, data } => {
                    let Some(number) = self.number(node) else {
                        return result;
                    };
                    if slot
                        .key
                        .compare_exchange(
                            seen,
                            print.key(number),
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_err()
                    {
                        // Another room took this free slot; look again.
                        continue;
                    }
                    slot.data.store(data, Ordering::Release);
                    if seen == EMPTY || seen == GONE {
                        rooms.live += 1;
                    }
                    rooms.record(Cold {
                        print,
                        room: room.into(),
                        pinned_at_ms: now,
                    });
                    let grow = seen == EMPTY && {
                        rooms.took_empty += 1;
                        rooms.took_empty > MemoryPins::share(index)
                    };
                    drop(writer);
                    if grow {
                        self.rebuild(false);
                    }
                    return result;
                }
            }
        }
    }

    /// Pins the room to `node` unless a live pin whose node `holds` is there.
    ///
    /// `node` moves into the answer rather than being cloned for it: every new room of a node
    /// would otherwise count its name's reference up and down once more, a cache line the
    /// cores placing rooms on that node take from each other.
    fn pin_unless_held(&self, room: &str, node: NodeId, holds: impl Fn(&NodeId) -> bool) -> Pinned {
        let outcome = self.write(room, |held, now| match held {
            Some(held) if holds(held.node) && !self.expired(held.data, now) => {
                (Change::Keep, Err(held.node.clone()))
            }
            held => (
                Change::Put {
                    node: &node,
                    data: pin_index::data(now, 1),
                },
                Ok(held.map(|held| held.node.clone())),
            ),
        });
        match outcome {
            Ok(displaced) => Pinned::made(node, displaced),
            Err(kept) => Pinned::kept(kept),
        }
    }

    /// How many empty slots one shard may take before the index is rebuilt: its share of 60 %.
    /// Tombstones count: a search for a room not in the index reads on to an empty slot.
    fn share(index: &Table) -> usize {
        index.slots() * 3 / 5 / SHARDS
    }

    /// Builds a new index holding every taken slot, at most a third full, and
    /// publishes it. Unless `forced`, only when some shard has still taken more than its share
    /// (another writer may have rebuilt it since).
    fn rebuild(&self, forced: bool) {
        let mut shards: Vec<MutexGuard<'_, Writer>> = self.shards.iter().map(Shard::lock).collect();
        let old = shards[0].index.clone();
        let share = MemoryPins::share(&old);
        if !forced && shards.iter().all(|writer| writer.rooms.took_empty <= share) {
            return;
        }
        let live: usize = shards.iter().map(|writer| writer.rooms.live).sum();
        // At most a third full, so that it takes many new rooms before the next rebuild.
        let mut slots = (live * 3).max(MIN_SLOTS);
        // Each shard's pins, counted while copying: the slots the new index starts with taken.
        let (new, taken) = loop {
            let new = Table::with_slots(slots);
            let mut taken = [0; SHARDS];
            if old.taken().all(|(slot, key)| {
                taken[Fingerprint::of_key(key).shard(SHARDS)] += 1;
                new.copy_in(key, slot.data.load(Ordering::Acquire))
            }) {
                break (Arc::new(new), taken);
            }
            slots *= 2;
        };
        for (writer, taken) in shards.iter_mut().zip(taken) {
            writer.rooms.took_empty = taken;
            writer.index = new.clone();
        }
        self.index.store(new);
    }

    fn describe(
        &self,
        room: &str,
        node: &NodeId,
        data: u64,
        pinned_at_ms: u64,
        now_ms: u64,
    ) -> PinInfo {
        PinInfo {
            room: room.to_string(),
            node: node.clone(),
            pinned_for: Duration::from_millis(now_ms.saturating_sub(pinned_at_ms)),
            idle: Duration::from_millis(now_ms.saturating_sub(pin_index::last_seen(data))),
            requests: pin_index::requests(data),
        }
    }
}

impl PinStore for MemoryPins {
    fn lookup_with(&self, room: &str, found: &mut dyn FnMut(&NodeId, &IndexHint)) -> bool {
        let print = self.fingerprint(room);
        let number = self.with_view(|view| {
            let (slot, key) = view.index.load().find(print)?;
            let data = slot.data.load(Ordering::Acquire);
            let now = self.now_ms();
            if self.expired(data, now) {
                return None;
            }
            // A load and a store, not an atomic add: the count is for operators, and an add is a
            // full barrier that keeps the CPU from overlapping one lookup's cache misses with the
            // next. Two requests of the same room at the same instant may count once.
            slot.data
                .store(pin_index::touched(data, now), Ordering::Relaxed);
            Some(pin_index::number(key))
        });
        let Some(number) = number.flatten() else {
            return false;
        };
        match self.numbers.get(number) {
            Some((id, hint)) => {
                found(id, hint);
                true
            }
            None => false,
        }
    }

    fn pin_if_absent(&self, room: &str, node: NodeId) -> Pinned {
        self.pin_unless_held(room, node, |_| true)
    }

    fn repin(&self, room: &str, stale: &NodeId, node: NodeId) -> Pinned {
        self.pin_unless_held(room, node, |held| held != stale)
    }

    fn unpin(&self, room: &str) -> Option<NodeId> {
        self.write(room, |held, _| match held {
            Some(held) => (Change::Remove, Some(held.node.clone())),
            None => (Change::Keep, None),
        })
    }

    fn sweep(&self, dropped: &mut dyn FnMut(&NodeId)) -> usize {
        let now = self.now_ms();
        let index = self.index.load_full();
        let mut count = 0;
        for (slot, key) in index.taken() {
            if !self.expired(slot.data.load(Ordering::Acquire), now) {
                continue;
            }
            let print = Fingerprint::of_key(key);
            let mut writer = self.shards[print.shard(SHARDS)].lock();
            // Looked at again with the shard held: a request may have used it, or a writer
            // replaced it (even with another shard's room) since; and the index may have been
            // rebuilt (then the next sweep).
            if !Arc::ptr_eq(&index, &writer.index) {
                break;
            }
            let key = slot.key.load(Ordering::Acquire);
            if key == EMPTY
                || key == GONE
                || Fingerprint::of_key(key) != print
                || !self.expired(slot.data.load(Ordering::Acquire), now)
            {
                continue;
            }
            slot.key.store(GONE, Ordering::Release);
            slot.data.store(0, Ordering::Relaxed);
            writer.rooms.removed(print);
            dropped(self.node(key));
            count += 1;
        }
        drop(index);
        // An index left mostly empty by rooms that ended is rebuilt smaller.
        let slots = self.index.load().slots();
        if slots > MIN_SLOTS && self.len() * 8 < slots {
            self.rebuild(true);
        }
        count
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().rooms.live)
            .sum()
    }

    fn export(&self) -> Vec<PinInfo> {
        let now = self.now_ms();
        let mut pins = Vec::new();
        let mut seen = HashSet::with_hasher(RandomState::default());
        for shard in self.shards.iter() {
            let writer = shard.lock();
            seen.clear();
            for cold in writer.rooms.log.iter().rev() {
                if !seen.insert(cold.print) || cold.is_removal() {
                    continue;
                }
                let Some((slot, key)) = writer.index.find(cold.print) else {
                    continue;
                };
                let data = slot.data.load(Ordering::Acquire);
                if !self.expired(data, now) {
                    let node = self.node(key);
                    pins.push(self.describe(&cold.room, node, data, cold.pinned_at_ms, now));
                }
            }
        }
        pins
    }

    fn info(&self, room: &str) -> Option<PinInfo> {
        let now = self.now_ms();
        let print = self.fingerprint(room);
        let writer = self.shards[print.shard(SHARDS)].lock();
        let (slot, key) = writer.index.find(print)?;
        let data = slot.data.load(Ordering::Acquire);
        let pinned_at = writer
            .rooms
            .log
            .iter()
            .rev()
            .find(|cold| cold.print == print)
            .map_or(now, |cold| cold.pinned_at_ms);
        (!self.expired(data, now))
            .then(|| self.describe(room, self.node(key), data, pinned_at, now))
    }

    fn set(&self, room: &str, node: NodeId) -> Option<NodeId> {
        self.write(room, |held, now| {
            let old = held
                .filter(|held| !self.expired(held.data, now))
                .map(|held| held.node.clone());
            let put = Change::Put {
                node: &node,
                data: pin_index::data(now, 1),
            };
            (put, old)
        })
    }

    fn restore(&self, room: &str, node: NodeId, idle: Duration) -> bool {
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        if idle_ms > self.idle_ms {
            return false;
        }
        // A pin restored as if last seen `idle` ago expires on the same schedule it had.
        self.write(room, |held, now| match held {
            Some(_) => (Change::Keep, false),
            None => (
                Change::Put {
                    node: &node,
                    data: pin_index::data(now.saturating_sub(idle_ms), 1),
                },
                true,
            ),
        })
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

    #[test]
    fn rooms_with_one_fingerprint_share_one_pin() {
        // Three fingerprints for every room name: rooms collide all the time.
        let pins = MemoryPins::colliding(Duration::from_secs(60), 0x3 << 16);
        let placed: Vec<NodeId> = (0..30)
            .map(|i| {
                pins.pin_if_absent(&format!("room-{i}"), NodeId::new(&format!("n{i}")))
                    .node
            })
            .collect();
        let mut nodes = placed.clone();
        nodes.sort();
        nodes.dedup();
        assert!(nodes.len() <= 3, "{nodes:?}");
        for (i, node) in placed.iter().enumerate() {
            assert_eq!(pins.lookup(&format!("room-{i}")).as_ref(), Some(node));
        }
        assert!(pins.len() <= 3);
        // Unpinning one room unpins the rooms that share its pin, and no others.
        let gone = pins.unpin("room-0").unwrap();
        for (i, node) in placed.iter().enumerate() {
            let now = pins.lookup(&format!("room-{i}"));
            assert_eq!(now.is_none(), *node == gone, "room-{i}");
        }
    }

    #[test]
    fn racing_writers_agree_while_the_index_grows() {
        let pins = MemoryPins::new(Duration::from_secs(60));
        let rooms = 30_000;
        let results: Vec<Vec<NodeId>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|t| {
                    let pins = &pins;
                    s.spawn(move || {
                        let node = NodeId::new(&format!("n{t}"));
                        // Each thread walks the rooms from a different start.
                        (0..rooms)
                            .map(|i| {
                                let room = format!("room-{}", (i + t * rooms / 4) % rooms);
                                pins.pin_if_absent(&room, node.clone()).node
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(pins.index.load().slots() >= 2 * rooms, "the index grew");
        assert_eq!(pins.len(), rooms);
        for (t, seen) in results.iter().enumerate() {
            for (i, node) in seen.iter().enumerate() {
                let room = format!("room-{}", (i + t * rooms / 4) % rooms);
                assert_eq!(pins.lookup(&room).as_ref(), Some(node), "{room}");
            }
        }
    }

    #[test]
    fn readers_find_every_pin_while_the_index_is_rebuilt() {
        let pins = MemoryPins::new(Duration::from_secs(60));
        let old: Vec<String> = (0..2_000).map(|i| format!("old-{i}")).collect();
        for (i, room) in old.iter().enumerate() {
            pins.pin_if_absent(room, NodeId::new(&format!("n{}", i % 7)));
        }
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut passes = 0;
                while !done.load(Ordering::Relaxed) || passes == 0 {
                    for (i, room) in old.iter().enumerate() {
                        let node = pins.lookup(room);
                        assert_eq!(node, Some(NodeId::new(&format!("n{}", i % 7))), "{room}");
                    }
                    passes += 1;
                }
            });
            // Growth, and churn that fills the index with tombstones and sheds them.
            for i in 0..60_000 {
                let room = format!("new-{i}");
                pins.pin_if_absent(&room, NodeId::new("x"));
                if i % 3 != 0 {
                    pins.unpin(&room);
                }
            }
            done.store(true, Ordering::Relaxed);
            reader.join().unwrap();
        });
        assert_eq!(pins.len(), 2_000 + 20_000);
    }

    #[test]
    fn churn_does_not_grow_the_index() {
        let pins = MemoryPins::new(Duration::from_secs(60));
        for i in 0..200_000 {
            let room = format!("r{i}");
            pins.pin_if_absent(&room, NodeId::new("a"));
            if i >= 100 {
                pins.unpin(&format!("r{}", i - 100));
            }
        }
        assert_eq!(pins.len(), 100);
        assert_eq!(pins.index.load().slots(), MIN_SLOTS);
        assert_eq!(pins.lookup("r199999"), Some(NodeId::new("a")));
        assert_eq!(pins.lookup("r199899"), None);
        let logged: usize = (pins.shards.iter()).map(|s| s.lock().rooms.log.len()).sum();
        assert!(
            logged <= SHARDS * 1025 + 200,
            "the logs were compacted: {logged}"
        );
        let mut listed: Vec<String> = pins.export().into_iter().map(|p| p.room).collect();
        listed.sort();
        let mut live: Vec<String> = (199_900..200_000).map(|i| format!("r{i}")).collect();
        live.sort();
        assert_eq!(listed, live);
    }

    #[test]
    fn compacted_logs_keep_exactly_the_pins_the_index_holds() {
        // 256 fingerprints for thousands of names: pins are shared, replaced, removed and
        // made again many times over while the logs are compacted.
        let pins = MemoryPins::colliding(Duration::from_secs(60), 0xff << 16);
        for i in 0..40_000u32 {
            let room = format!("room-{}", i.wrapping_mul(2_654_435_761) % 5_000);
            match i % 5 {
                0 | 1 => drop(pins.pin_if_absent(&room, NodeId::new(&format!("n{}", i % 3)))),
                2 => drop(pins.set(&room, NodeId::new("s"))),
                _ => drop(pins.unpin(&room)),
            }
        }
        let exported = pins.export();
        let prints: HashSet<Fingerprint> =
            exported.iter().map(|p| pins.fingerprint(&p.room)).collect();
        assert_eq!(prints.len(), exported.len(), "one record per pin");
        assert_eq!(exported.len(), pins.len());
        assert_eq!(pins.index.load().taken().count(), pins.len());
        for pin in &exported {
            assert_eq!(
                pins.lookup(&pin.room).as_ref(),
                Some(&pin.node),
                "{}",
                pin.room
            );
        }
    }

    #[test]
    fn sweep_drops_only_idle_pins() {
        let pins = MemoryPins::new(Duration::from_millis(500));
        for i in 0..5_000 {
            pins.pin_if_absent(&format!("r{i}"), NodeId::new("a"));
        }
        std::thread::sleep(Duration::from_millis(300));
        for i in 0..100 {
            assert!(pins.lookup(&format!("r{i}")).is_some());
        }
        std::thread::sleep(Duration::from_millis(300));
        let mut dropped = 0;
        assert_eq!(pins.sweep(&mut |_| dropped += 1), 4_900);
        assert_eq!((dropped, pins.len()), (4_900, 100));
        assert_eq!(pins.export().len(), 100);
        assert_eq!(
            pins.index.load().slots(),
            MIN_SLOTS,
            "shrunk after the sweep"
        );
        for i in 0..100 {
            assert!(
                pins.lookup(&format!("r{i}")).is_some(),
                "kept through the rebuild"
            );
        }
    }

    #[test]
    fn tables_used_in_turn_on_one_thread_keep_apart() {
        let (one, two) = (
            MemoryPins::new(Duration::from_secs(60)),
            MemoryPins::new(Duration::from_secs(60)),
        );
        let (a, b) = (NodeId::new("a"), NodeId::new("b"));
        for i in 0..3_000 {
            let room = format!("r{i}");
            // The same node ids in both tables, numbered in opposite orders.
            let (first, second) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
            one.pin_if_absent(&room, first.clone());
            two.pin_if_absent(&room, second.clone());
            assert_eq!(one.lookup(&room).as_ref(), Some(first));
            assert_eq!(two.lookup(&room).as_ref(), Some(second));
        }
        assert_eq!((one.len(), two.len()), (3_000, 3_000));
    }
}
