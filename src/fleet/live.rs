//! What changes about a node between fleet rebuilds: its rooms, its health, its drain switch.
//!
//! A [`NodeLive`] is created once per node name and kept for the life of the process (also while
//! the node is out of the config), so counters survive every rebuild of the immutable fleet state
//! and a node that comes back finds its pins counted. Reads on the request path are single
//! relaxed atomic loads. What placement reads of a node is one packed word, and the words of
//! nodes made one after another sit side by side in chunks ([`Words`], handed out by an
//! [`Arena`]), so that a placement scan over a thousand nodes reads a few kilobytes in order.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::metrics::{Histogram, StatusCounts};

/// Health-check thresholds, defined with the config (`[health]`).
pub use crate::config::Thresholds;

/// Nodes whose packed words share one allocation.
const WORDS_PER_CHUNK: usize = 64;

/// The packed words (see [`Load`]) of up to 64 nodes side by side: a placement scan over a
/// large fleet then reads them in order, eight to a cache line, instead of one scattered record
/// per node. Next to them, each node's watch mark (see `Words::watch`).
#[derive(Debug)]
pub struct Words {
    packed: [AtomicU64; WORDS_PER_CHUNK],
    watch: [AtomicU32; WORDS_PER_CHUNK],
}

impl Words {
    fn new() -> Words {
        Words {
            packed: std::array::from_fn(|_| AtomicU64::new(0)),
            watch: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }

    /// The word at `at`.
    #[inline(always)]
    pub fn load(&self, at: usize) -> Load {
        // The mask (a no-op for every `at` handed out) spares the scan a bounds check per node.
        Load(self.packed[at % WORDS_PER_CHUNK].load(Ordering::Relaxed))
    }

    /// Asks the node at `at` to report (by bumping [`Totals::changes`]) when its rooms fall
    /// below `rooms`, that is when a bounded-load cap of `rooms` would let it take rooms again;
    /// 0 asks for nothing. Placement's shortlist sets it on the nodes it left out only for being
    /// at the cap (see `placement::shortlist`).
    pub(crate) fn watch(&self, at: usize, rooms: u32) {
        let mark = &self.watch[at % WORDS_PER_CHUNK];
        // Written only when it changes: every room leaving the node reads it.
        if mark.load(Ordering::Relaxed) != rooms {
            mark.store(rooms, Ordering::Relaxed);
        }
    }
}

/// Counters shared by every node of one fleet (every node its [`Arena`] made).
///
/// They let placement decide a new room from a short list of nodes instead of reading every
/// node, and know when that list can no longer be trusted (see `placement::shortlist`).
#[derive(Debug, Default)]
pub struct Totals {
    /// Active rooms over every node, kept with each node's own count.
    rooms: Line,
    /// Bumped whenever a node's estimate may have fallen or whether it can take rooms changed:
    /// a fresh CPU reading, health or drain flipping, a watched node's rooms falling below its
    /// watch mark.
    changes: Line,
}

/// One counter on a cache line of its own: `rooms` is written by every placement and
/// `changes` is read by every one, so they must not share a line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Line(AtomicU64);

impl Totals {
    /// Active rooms over every node of the fleet (draining, unhealthy and removed ones too).
    pub fn rooms(&self) -> u64 {
        self.rooms.0.load(Ordering::Relaxed)
    }

    /// How many changes (see the field) there have been so far.
    pub fn changes(&self) -> u64 {
        self.changes.0.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.changes.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// Hands out packed words: nodes made one after another get neighbouring words.
#[derive(Debug, Default)]
pub struct Arena {
    chunk: Option<Arc<Words>>,
    used: usize,
    totals: Arc<Totals>,
}

impl Arena {
    /// A healthy, undrained node with no rooms, its word next to the last one handed out.
    pub fn node(&mut self) -> NodeLive {
        let chunk = match &self.chunk {
            Some(chunk) if self.used < WORDS_PER_CHUNK => chunk.clone(),
            _ => {
                self.used = 0;
                let fresh = Arc::new(Words::new());
                self.chunk = Some(fresh.clone());
                fresh
            }
        };
        self.used += 1;
        NodeLive {
            words: chunk,
            at: self.used - 1,
            totals: self.totals.clone(),
            streak: AtomicU64::new(0),
            checked_at_ms: AtomicU64::new(0),
            requests: Box::default(),
            upstream: Box::new(Histogram::upstream()),
        }
    }
}

/// Live facts about one node.
#[derive(Debug)]
pub struct NodeLive {
    /// Everything placement reads, packed into one word (see [`Load`]) so a scan of a large
    /// fleet takes one load per node and a placement one atomic update: `words[at]`.
    words: Arc<Words>,
    at: usize,
    /// The fleet's totals, which this node's counts are part of.
    totals: Arc<Totals>,
    /// Consecutive failures (high half) and successes (low half) of health checks.
    streak: AtomicU64,
    /// Unix milliseconds of the last health result, 0 before the first.
    checked_at_ms: AtomicU64,
    /// Answers for this node by status class (metrics only; placement never reads them).
    /// Boxed, on cache lines of their own: they are written on every answer, and the word above
    /// is read by every routing decision, so they must not share a line. Keeping them out also
    /// keeps this record small, so a scan of a thousand of them stays in cache.
    pub requests: Box<StatusCounts>,
    /// Time to the node's response head (metrics only; boxed like `requests`).
    pub upstream: Box<Histogram>,
}

/// Bits of [`NodeLive`]'s packed word: rooms in the low 32, rooms placed since the last reading
/// in the next 30, then the drain switch and the health flag (set when unhealthy, so that a
/// fresh node is healthy).
const ROOMS: u64 = 0xFFFF_FFFF;
const PLACED_SHIFT: u32 = 32;
const PLACED: u64 = 0x3FFF_FFFF << PLACED_SHIFT;
const DRAINING: u64 = 1 << 62;
const UNHEALTHY: u64 = 1 << 63;

/// One consistent reading of a node's placement counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load(u64);

impl Load {
    /// Active rooms pinned to the node.
    pub fn rooms(self) -> u32 {
        (self.0 & ROOMS) as u32
    }

    /// Rooms placed on the node since the last CPU reading.
    pub fn placed_since_reading(self) -> u32 {
        ((self.0 & PLACED) >> PLACED_SHIFT) as u32
    }

    /// Healthy and not draining: may take new rooms.
    pub fn available(self) -> bool {
        self.0 & (DRAINING | UNHEALTHY) == 0
    }

    /// Health checks pass (draining or not).
    pub fn healthy(self) -> bool {
        self.0 & UNHEALTHY == 0
    }

    fn draining(self) -> bool {
        self.0 & DRAINING != 0
    }
}

impl Default for NodeLive {
    /// A healthy, undrained node with no rooms, its word in a chunk of its own.
    fn default() -> Self {
        Arena::default().node()
    }
}

impl NodeLive {
    /// Rooms, rooms placed since the last reading, health and drain, read at once.
    pub fn load(&self) -> Load {
        self.words.load(self.at)
    }

    /// The chunk holding this node's word, and the word's place in it.
    pub fn word(&self) -> (&Arc<Words>, usize) {
        (&self.words, self.at)
    }

    fn packed(&self) -> &AtomicU64 {
        &self.words.packed[self.at]
    }

    /// The totals of the fleet this node belongs to.
    pub fn totals(&self) -> &Arc<Totals> {
        &self.totals
    }

    /// Active rooms pinned to this node.
    pub fn rooms(&self) -> u32 {
        self.load().rooms()
    }

    /// Rooms placed here since the last CPU reading.
    pub fn placed_since_reading(&self) -> u32 {
        self.load().placed_since_reading()
    }

    /// Applies `change` to the packed word; returns the word before.
    fn update(&self, change: impl Fn(u64) -> u64) -> Load {
        let before = self
            .packed()
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| Some(change(w)));
        Load(before.unwrap_or_else(|w| w))
    }

    /// Whether health checks currently pass.
    pub fn healthy(&self) -> bool {
        self.load().healthy()
    }

    /// Whether the node is draining (keeps its rooms, takes no new ones).
    pub fn draining(&self) -> bool {
        self.load().draining()
    }

    /// Healthy and not draining: may take new rooms.
    pub fn available(&self) -> bool {
        self.load().available()
    }

    /// A new room was placed here.
    pub fn room_placed(&self) {
        // Both counts saturate rather than carry into the flags.
        let before = self.update(|w| {
            let rooms = ((w & ROOMS) + 1).min(ROOMS);
            let placed = ((w & PLACED) + (1 << PLACED_SHIFT)).min(PLACED);
            (w & !(ROOMS | PLACED)) | rooms | placed
        });
        if before.rooms() < u32::MAX {
            self.totals.rooms.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A room pinned here went away (expired, unpinned or moved).
    pub fn room_left(&self) {
        // Saturate rather than wrap if a count was ever missed.
        let before = self.update(|w| (w & !ROOMS) | (w & ROOMS).saturating_sub(1));
        if before.rooms() == 0 {
            return;
        }
        self.totals.rooms.0.fetch_sub(1, Ordering::Relaxed);
        // From `watch` rooms to one fewer: under a cap of `watch` again.
        if self.words.watch[self.at].load(Ordering::Relaxed) == before.rooms() {
            self.totals.changed();
        }
    }

    /// A fresh CPU reading now includes the rooms placed so far.
    pub fn reading_taken(&self) {
        self.packed().fetch_and(!PLACED, Ordering::Relaxed);
        self.totals.changed();
    }

    /// Sets the drain switch; returns the previous value.
    pub fn set_draining(&self, draining: bool) -> bool {
        let before = if draining {
            self.packed().fetch_or(DRAINING, Ordering::AcqRel)
        } else {
            self.packed().fetch_and(!DRAINING, Ordering::AcqRel)
        };
        let before = Load(before).draining();
        if before != draining {
            self.totals.changed();
        }
        before
    }

    /// When the last health result was recorded (Unix milliseconds).
    pub fn checked_at_ms(&self) -> Option<u64> {
        Some(self.checked_at_ms.load(Ordering::Relaxed)).filter(|&ms| ms > 0)
    }

    /// Records a health-check result (or a passive failure); returns the new health on a change.
    pub fn record_check(&self, ok: bool, thresholds: Thresholds) -> Option<bool> {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.checked_at_ms.store(unix_ms, Ordering::Relaxed);
        let bump = |streak: u64| {
            let (failures, successes) = ((streak >> 32) as u32, streak as u32);
            let (failures, successes) = if ok {
                (0, successes.saturating_add(1))
            } else {
                (failures.saturating_add(1), 0)
            };
            (u64::from(failures) << 32) | u64::from(successes)
        };
        let before = self
            .streak
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| Some(bump(s)))
            .unwrap_or_else(|s| s);
        let streak = bump(before);
        let (failures, successes) = ((streak >> 32) as u32, streak as u32);
        let healthy = self.healthy();
        let now = if healthy {
            failures < thresholds.fall
        } else {
            successes >= thresholds.rise
        };
        if now == healthy {
            return None;
        }
        // Only the caller that flips the flag reports the change.
        let before = if now {
            self.packed().fetch_and(!UNHEALTHY, Ordering::AcqRel)
        } else {
            self.packed().fetch_or(UNHEALTHY, Ordering::AcqRel)
        };
        let flipped = Load(before).healthy() != now;
        if flipped {
            self.totals.changed();
        }
        flipped.then_some(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fall_and_rise() {
        let live = NodeLive::default();
        let t = Thresholds { fall: 3, rise: 2 };
        assert_eq!(live.record_check(false, t), None);
        assert_eq!(live.record_check(false, t), None);
        assert_eq!(live.record_check(false, t), Some(false));
        assert!(!live.available());
        assert_eq!(live.record_check(true, t), None);
        assert_eq!(live.record_check(false, t), None);
        assert_eq!(live.record_check(true, t), None);
        assert_eq!(live.record_check(true, t), Some(true));
        assert!(live.healthy());
    }

    #[test]
    fn room_counts_never_wrap() {
        let live = NodeLive::default();
        live.room_placed();
        live.room_left();
        live.room_left();
        assert_eq!(live.rooms(), 0);
        assert_eq!(live.placed_since_reading(), 1);
        live.reading_taken();
        assert_eq!(live.placed_since_reading(), 0);
    }
}
