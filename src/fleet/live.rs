//! What changes about a node between fleet rebuilds: its rooms and participants joining, its
//! health, its drain switches (the operator's, and the one its signal-sidecar reports).
//!
//! A [`NodeLive`] is created once per node name and kept for the life of the process (also while
//! the node is out of the config), so counters survive every rebuild of the immutable fleet state
//! and a node that comes back finds its pins counted. Every field is a plain atomic: reads on the
//! request path are relaxed loads, a placement is two relaxed additions.
//!
//! The per-node metrics (answers by status, time to the response head) and the last health
//! failure sit in a [`Report`] of their own: every proxied request writes it, and placement,
//! which reads the counters above for every candidate, then finds a thousand nodes' counters in
//! 64 KB of lines nothing else writes.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::metrics::{Histogram, StatusCounts};

/// Health-check thresholds, defined with the config (`[health]`).
pub use crate::config::Thresholds;

/// The participants value of a node without a census that counts.
const NO_CENSUS: u64 = u64::MAX;

/// Live facts about one node.
#[derive(Debug)]
pub struct NodeLive {
    /// Active rooms pinned to the node.
    rooms: AtomicU32,
    /// Rooms placed on the node since its last CPU reading.
    placed: AtomicU32,
    /// Participants who joined a room on the node through this router since its last CPU
    /// reading: signalling WebSockets opened to it.
    joined: AtomicU32,
    unhealthy: AtomicBool,
    /// The operator's drain switch (config file, admin API).
    draining: AtomicBool,
    /// The node's own, as its signal-sidecar reports it.
    drain_reported: AtomicBool,
    /// Consecutive failures (high half) and successes (low half) of health checks.
    streak: AtomicU64,
    /// Unix milliseconds of the last health result, 0 before the first.
    checked_at_ms: AtomicU64,
    /// What the admin listener shows and placement never reads.
    pub report: Box<Report>,
}

/// What is known of a node for operators only: written by requests and health checks, read by
/// the admin API and the exporter.
#[derive(Debug)]
pub struct Report {
    /// Answers for this node by status class.
    pub requests: StatusCounts,
    /// Time to the node's response head.
    pub upstream: Histogram,
    /// Which check failed last and why, until a check passes again.
    failure: Mutex<Option<String>>,
    /// Participants the node's census counted (the last good answer, while it counts).
    /// (`NO_CENSUS` when none counts: a plain atomic, as placement reads it for capped nodes.)
    participants: AtomicU64,
    /// Census polls that got no good answer.
    pub census_failures: AtomicU64,
    /// Unix milliseconds since which the node has been draining with no live room, 0 when not.
    empty_since_ms: AtomicU64,
}

impl Default for NodeLive {
    /// A healthy, undrained node with no rooms.
    fn default() -> Self {
        NodeLive {
            rooms: AtomicU32::new(0),
            placed: AtomicU32::new(0),
            joined: AtomicU32::new(0),
            unhealthy: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            drain_reported: AtomicBool::new(false),
            streak: AtomicU64::new(0),
            checked_at_ms: AtomicU64::new(0),
            report: Box::new(Report {
                requests: StatusCounts::default(),
                upstream: Histogram::upstream(),
                failure: Mutex::new(None),
                participants: AtomicU64::new(NO_CENSUS),
                census_failures: AtomicU64::new(0),
                empty_since_ms: AtomicU64::new(0),
            }),
        }
    }
}

impl NodeLive {
    /// Active rooms pinned to this node.
    pub fn rooms(&self) -> u32 {
        self.rooms.load(Ordering::Relaxed)
    }

    /// Rooms placed here since the last CPU reading.
    pub fn placed_since_reading(&self) -> u32 {
        self.placed.load(Ordering::Relaxed)
    }

    /// Whether health checks currently pass.
    pub fn healthy(&self) -> bool {
        !self.unhealthy.load(Ordering::Relaxed)
    }

    /// Whether the node is draining (keeps its rooms, takes no new ones): the operator or its
    /// signal-sidecar says so.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed) || self.drain_reported()
    }

    /// Whether the node's signal-sidecar reports it draining.
    pub fn drain_reported(&self) -> bool {
        self.drain_reported.load(Ordering::Relaxed)
    }

    /// Healthy and not draining: may take new rooms.
    pub fn available(&self) -> bool {
        self.healthy() && !self.draining()
    }

    /// A new room was placed here.
    pub fn room_placed(&self) {
        saturating_add(&self.rooms);
        saturating_add(&self.placed);
    }

    /// A room pinned here went away (expired, unpinned or moved).
    pub fn room_left(&self) {
        // Saturate rather than wrap if a count was ever missed.
        let _ =
            (self.rooms).fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// A participant joined a room on this node through this router (its signalling
    /// WebSocket opened).
    pub fn participant_joined(&self) {
        saturating_add(&self.joined);
    }

    /// Participants who joined rooms on this node since its last CPU reading.
    pub fn joined_since_reading(&self) -> u32 {
        self.joined.load(Ordering::Relaxed)
    }

    /// A fresh CPU reading now includes the rooms placed and the participants joined so far.
    pub fn reading_taken(&self) {
        self.placed.store(0, Ordering::Relaxed);
        self.joined.store(0, Ordering::Relaxed);
    }

    /// Sets the operator's drain switch; returns its previous value.
    pub fn set_draining(&self, draining: bool) -> bool {
        self.draining.swap(draining, Ordering::AcqRel)
    }

    /// Sets the drain the node's signal-sidecar reports; returns the previous value.
    pub fn set_drain_reported(&self, draining: bool) -> bool {
        self.drain_reported.swap(draining, Ordering::AcqRel)
    }

    /// When the last health result was recorded (Unix milliseconds).
    pub fn checked_at_ms(&self) -> Option<u64> {
        Some(self.checked_at_ms.load(Ordering::Relaxed)).filter(|&ms| ms > 0)
    }

    /// Participants on the node by its census; `None` without a census that counts.
    pub fn participants(&self) -> Option<u32> {
        let count = self.report.participants.load(Ordering::Relaxed);
        (count != NO_CENSUS).then(|| u32::try_from(count).unwrap_or(u32::MAX))
    }

    /// Sets the participants of the node's census (`None`: no census counts now).
    pub fn set_participants(&self, count: Option<u32>) {
        let count = count.map_or(NO_CENSUS, u64::from);
        self.report.participants.store(count, Ordering::Relaxed);
    }

    /// Since when (Unix milliseconds) the node has been draining with no live room: it may be
    /// stopped. `None` while it takes rooms or still has one.
    pub fn empty_since_ms(&self) -> Option<u64> {
        let since = self.report.empty_since_ms.load(Ordering::Relaxed);
        (since > 0 && self.draining()).then_some(since)
    }

    /// Records whether the node is drained and empty now (`empty`); returns whether it has just
    /// become so.
    pub fn set_drained_empty(&self, empty: bool) -> bool {
        let since = &self.report.empty_since_ms;
        if !empty {
            since.store(0, Ordering::Relaxed);
            return false;
        }
        (since.compare_exchange(0, unix_ms(), Ordering::Relaxed, Ordering::Relaxed)).is_ok()
    }

    /// Which check failed last and why; `None` once a check passes.
    pub fn failure(&self) -> Option<String> {
        (self.report.failure.lock()).map_or(None, |failure| failure.clone())
    }

    /// Records a health-check result (or a passive failure) with why it failed (`failure`,
    /// `None` for a pass); returns the new health on a change.
    pub fn record(&self, failure: Option<&str>, thresholds: Thresholds) -> Option<bool> {
        if let Ok(mut last) = self.report.failure.lock() {
            *last = failure.map(str::to_owned);
        }
        self.record_check(failure.is_none(), thresholds)
    }

    /// Records a health-check result (or a passive failure); returns the new health on a change.
    pub fn record_check(&self, ok: bool, thresholds: Thresholds) -> Option<bool> {
        self.checked_at_ms.store(unix_ms(), Ordering::Relaxed);
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
        // Only the caller that flips the flag reports the change.
        let flipped = now != healthy && self.unhealthy.swap(!now, Ordering::AcqRel) == now;
        flipped.then_some(now)
    }
}

/// Now, in Unix milliseconds (at least 1, so that 0 can mean "never").
fn unix_ms() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map_or(1, |d| {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
    })
}

fn saturating_add(count: &AtomicU32) {
    let _ = count.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1));
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

    #[test]
    fn empty_since_is_kept_while_empty_and_shown_only_while_draining() {
        let live = NodeLive::default();
        assert!(live.set_drained_empty(true), "just became empty");
        assert_eq!(live.empty_since_ms(), None, "not draining: not shown");
        live.set_draining(true);
        let since = live.empty_since_ms().expect("draining and empty");
        assert!(!live.set_drained_empty(true), "still empty: no new event");
        assert_eq!(
            live.empty_since_ms(),
            Some(since),
            "the first moment is kept"
        );
        assert!(!live.set_drained_empty(false));
        assert_eq!(live.empty_since_ms(), None);
        assert!(live.set_drained_empty(true), "empty again: a new event");
    }
}
