//! Placement of a new room: which node takes it.
//!
//! 1. **Candidates** are nodes that are healthy and not draining. Those whose estimated CPU is at
//!    or above `max_cpu` are left out, unless every candidate is, in which case the least busy still
//!    takes the room (the caller warns and counts it).
//! 2. **Estimated CPU** is the last Prometheus value plus `room_cost` × the rooms placed on the node
//!    since that value was read. Readings are up to one interval old; without the estimate every room
//!    of a burst would land on the node that looked least busy when it was read (herding).
//!    `room_cost` is configured, or learned from the fleet (CPU per active pinned room).
//! 3. **Bounded load** (consistent hashing with bounded loads, Mirrokni et al. 2016, as in HAProxy's
//!    `hash-balance-factor`): with `n` candidates holding `R` active rooms, a node may take the room
//!    only while its rooms + 1 ≤ ⌈`balance_factor` × (R + 1) / n⌉. The least-loaded candidate
//!    always qualifies, so the bound never leaves a room without a node; it caps how far CPU
//!    estimates can pile rooms onto one node when they are wrong.
//! 4. **Order**: nodes with CPU data before nodes without; lower estimate first; equal estimates,
//!    and a fleet with no fresh data at all, by the highest rendezvous weight of the room. Nothing
//!    depends on arrival order or randomness, so replicas that read the same snapshot and saw the
//!    same rooms choose the same node, and without data a node joining or leaving moves only its
//!    share of new rooms.

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::Instant;

use crate::fleet::{FleetState, Load};
use crate::placement::rendezvous;
use crate::placement::shortlist::{self, Shortlist};

/// Busy CPU assumed per room until the fleet teaches a better figure.
pub const DEFAULT_ROOM_COST: f64 = 0.01;

/// How placement weighs the fleet: the `[placement]` config section, defined with the config.
pub use crate::config::Placement as Settings;

/// The node chosen for a new room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chosen {
    /// Index into the fleet state's nodes.
    pub index: usize,
    /// True when every candidate was at or above `max_cpu`.
    pub over_max_cpu: bool,
}

/// A node's estimated busy CPU now (reading + cost of rooms placed since), for display.
pub fn estimate(
    state: &FleetState,
    settings: &Settings,
    index: usize,
    now: Instant,
) -> Option<f64> {
    let cost = settings
        .room_cost
        .or(state.learned_room_cost())
        .unwrap_or(DEFAULT_ROOM_COST);
    let base = state.cpu(now).get(index).copied().flatten()?;
    Some(base + cost * f64::from(state.slots()[index].load().placed_since_reading()))
}

/// Ranks of the placement order, as the top bit of a node's key (see [`key`]).
const OVER_MAX_CPU: u64 = 1 << 63;
/// The key of a node that cannot take rooms.
pub(super) const UNAVAILABLE: u64 = u64::MAX;

/// A node's place in the placement order as one integer, lowest first: nodes under `max_cpu` by
/// estimate, then nodes without data (an infinite estimate), then nodes at or over `max_cpu` by
/// estimate. Estimates are never negative, so their bits order as their values do; equal keys
/// are ties. One integer per node keeps the scan of a large fleet short and branch-free.
fn key(estimate: f64, available: bool, max_cpu: f64) -> u64 {
    let over = (estimate >= max_cpu) & estimate.is_finite();
    // Branch-free: an unavailable node's key is all ones.
    (estimate.to_bits() | (u64::from(over) << 63)) | (u64::from(!available).wrapping_neg())
}

thread_local! {
    /// Keys of the current decision, reused per thread so placement allocates nothing once warm.
    static KEYS: std::cell::Cell<Vec<u64>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The lowest key seen so far in a scan, the first node that had it, and whether another did.
#[derive(Clone, Copy)]
pub(super) struct Lowest {
    pub(super) key: u64,
    pub(super) index: usize,
    pub(super) tied: bool,
}

impl Lowest {
    pub(super) const NONE: Lowest = Lowest {
        key: UNAVAILABLE,
        index: 0,
        tied: false,
    };

    /// Branch-free: the scan's outcome depends on data the branch predictor cannot learn.
    #[inline(always)]
    pub(super) fn add(&mut self, index: usize, key: u64) {
        let lower = key < self.key;
        self.tied = (self.tied | (key == self.key)) & !lower;
        self.index = if lower { index } else { self.index };
        self.key = self.key.min(key);
    }

    pub(super) fn found(self) -> bool {
        self.key != UNAVAILABLE
    }
}

/// Inputs every key of one decision shares.
pub(super) struct Keying {
    /// Added to every base: infinite when the reading is stale, which is no reading.
    stale: f64,
    cost: f64,
}

impl Keying {
    /// A node's estimate as an orderable integer (see [`key`]) without the `max_cpu` rank, which
    /// only matters once the lowest estimate is over `max_cpu`; all ones when unavailable.
    #[inline(always)]
    pub(super) fn raw_key(&self, base: f64, load: Load) -> u64 {
        let estimate = base + self.stale + self.cost * f64::from(load.placed_since_reading());
        estimate.to_bits() | u64::from(!load.available()).wrapping_neg()
    }
}

/// Chooses the node for a new room with this hash; `None` when no node is healthy and undrained.
///
/// With fresh data, the state's short list (see `placement::shortlist`) usually answers from
/// a few dozen nodes. Otherwise one pass computes every node's estimate, totals the candidates'
/// rooms for the bounded-load cap, and keeps the lowest estimate within the cap. The cap depends
/// on the totals, so the pass uses the cap the previous decision on this state found (it moves
/// by one only every `n / balance_factor` rooms) and the kept estimates are searched again when
/// it has moved.
/// When the lowest is under `max_cpu`, as it is in a fleet with room to spare, that is the
/// answer; ties, rare once rooms spread the estimates apart, are then settled by rendezvous
/// weight over the tied nodes only, and the pass leaves a new short list for the next rooms.
/// Otherwise the full placement order (module docs, points 1 and 4) decides, from the kept
/// estimates.
pub fn choose(
    state: &FleetState,
    settings: &Settings,
    room_hash: u64,
    now: Instant,
) -> Option<Chosen> {
    let fresh = !state.cpu(now).is_empty();
    let keying = Keying {
        stale: if fresh { 0.0 } else { f64::INFINITY },
        cost: settings
            .room_cost
            .or(state.learned_room_cost())
            .unwrap_or(DEFAULT_ROOM_COST),
    };
    let listed = fresh && state.slots().len() > shortlist::SCAN_WHOLE_UP_TO;
    let totals = state.totals().filter(|_| listed);
    if let Some(totals) = totals {
        if let Some(list) = &*state.shortlist().load() {
            if let Some(index) =
                Shortlist::choose(list, state, settings, &keying, room_hash, totals)
            {
                return Some(Chosen {
                    index,
                    over_max_cpu: false,
                });
            }
        }
    }
    // Read before the scan: a change during it makes the list it leaves stale at once.
    let changes = totals.map(|t| t.changes());
    let slots = state.slots();
    let guess = state.cap_hint();
    KEYS.with(|cell| {
        let mut keys = cell.take();
        keys.clear();
        keys.resize(slots.len(), UNAVAILABLE);
        let (mut count, mut rooms) = (0u64, 0u64);
        let mut within = Lowest::NONE;
        for (index, (slot, out)) in slots.iter().zip(keys.iter_mut()).enumerate() {
            let load = slot.load();
            let key = keying.raw_key(slot.base(), load);
            *out = key;
            let available = u64::from(load.available());
            count += available;
            rooms += u64::from(load.rooms()) * available;
            let capped = !under_cap(load, guess);
            within.add(index, key | u64::from(capped).wrapping_neg());
        }
        let cap = cap(settings, count, rooms);
        if cap != guess {
            state.set_cap_hint(cap);
            within = lowest(state, &keys, Some(cap));
        }
        let chosen = if within.found() && within.key < settings.max_cpu.to_bits() {
            let index = settle(state, &keys, room_hash, Some(cap), within);
            if let Some(changes) = changes {
                let list = Shortlist::make(state, settings, &keys, cap, within, changes);
                state.shortlist().store(list.map(Arc::new));
            }
            Some(Chosen {
                index,
                over_max_cpu: false,
            })
        } else {
            ranked(state, settings, &mut keys, room_hash, cap)
        };
        cell.set(keys);
        chosen
    })
}

/// Whether a node with this load may take one more room under the bounded-load `cap`.
#[inline(always)]
pub(super) fn under_cap(load: Load, cap: u64) -> bool {
    u64::from(load.rooms()) < cap
}

/// The lowest of `keys`, counting only nodes under `cap` rooms if there is a cap.
fn lowest(state: &FleetState, keys: &[u64], cap: Option<u64>) -> Lowest {
    let slots = state.slots();
    let mut found = Lowest::NONE;
    for (index, &key) in keys.iter().enumerate() {
        if key != UNAVAILABLE && cap.is_none_or(|cap| under_cap(slots[index].load(), cap)) {
            found.add(index, key);
        }
    }
    found
}

/// The node of `lowest`, its ties settled by the highest rendezvous weight for the room (then
/// the lower index) among the nodes with that key (and under `cap` rooms if there is a cap).
fn settle(
    state: &FleetState,
    keys: &[u64],
    room_hash: u64,
    cap: Option<u64>,
    lowest: Lowest,
) -> usize {
    if !lowest.tied {
        return lowest.index;
    }
    let slots = state.slots();
    let tied = (keys.iter().enumerate())
        .filter(|&(i, &k)| k == lowest.key && cap.is_none_or(|cap| under_cap(slots[i].load(), cap)))
        .map(|(i, _)| i);
    // Counts moved under us and no node holds the key any more: the first one that did.
    heaviest(state, room_hash, tied).unwrap_or(lowest.index)
}

/// Of these tied nodes, the one with the highest rendezvous weight for the room (then the lower
/// index): how every tie in placement is settled.
pub(super) fn heaviest(
    state: &FleetState,
    room_hash: u64,
    tied: impl Iterator<Item = usize>,
) -> Option<usize> {
    let slots = state.slots();
    tied.max_by_key(|&i| (rendezvous::weight(room_hash, slots[i].seed), Reverse(i)))
}

/// The decision by the full order of [`key`], for when no node within the cap is under
/// `max_cpu`: ranks the kept estimates, then takes the lowest within the cap if that is allowed,
/// else the lowest of all.
///
/// A node within the cap is allowed unless it is over `max_cpu` while some node (over the cap)
/// is not: then the cap cannot be kept without sending the room to a busy node, and it yields.
fn ranked(
    state: &FleetState,
    settings: &Settings,
    keys: &mut [u64],
    room_hash: u64,
    cap: u64,
) -> Option<Chosen> {
    for k in keys.iter_mut().filter(|k| **k != UNAVAILABLE) {
        *k = key(f64::from_bits(*k), true, settings.max_cpu);
    }
    let all = lowest(state, keys, None);
    if !all.found() {
        return None;
    }
    let within = lowest(state, keys, Some(cap));
    let over_max_cpu = all.key >= OVER_MAX_CPU;
    let bounded = within.found() && (over_max_cpu || within.key < OVER_MAX_CPU);
    let index = if bounded {
        settle(state, keys, room_hash, Some(cap), within)
    } else {
        settle(state, keys, room_hash, None, all)
    };
    Some(Chosen {
        index,
        over_max_cpu,
    })
}

/// The bounded-load cap: a node may take a room while it has fewer rooms than this, with `rooms`
/// active rooms over `count` candidates.
pub(super) fn cap(settings: &Settings, count: u64, rooms: u64) -> u64 {
    // A float-to-integer cast saturates; the cap is never below 1.
    ((settings.balance_factor * (rooms + 1) as f64 / count.max(1) as f64).ceil() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeSpec;
    use crate::fleet::Fleet;
    use std::collections::HashMap;
    use std::time::Duration;

    fn fleet(n: usize) -> Fleet {
        let specs = (0..n)
            .map(|i| NodeSpec::new(&format!("n{i}"), &format!("http://10.0.0.{i}:80")).unwrap())
            .collect();
        Fleet::new(specs, Duration::from_secs(90))
    }

    fn read(fleet: &Fleet, cpu: &[f64]) {
        let values = cpu
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("10.0.0.{i}:80"), *c))
            .collect::<HashMap<_, _>>();
        fleet.set_cpu(values, Instant::now());
    }

    /// Places `rooms` new rooms the way the router does (counting each placement); returns
    /// each room's node index.
    fn sequence(fleet: &Fleet, settings: &Settings, rooms: u64) -> Vec<usize> {
        (0..rooms)
            .map(|room| {
                let state = fleet.snapshot();
                let hash = rendezvous::seed(&room.to_le_bytes());
                let chosen = choose(&state, settings, hash, Instant::now()).unwrap();
                state.nodes()[chosen.index].live.room_placed();
                chosen.index
            })
            .collect()
    }

    /// Rooms per node after placing `rooms` new rooms.
    fn place(fleet: &Fleet, settings: &Settings, rooms: u64) -> Vec<usize> {
        let mut per_node = vec![0; fleet.snapshot().nodes().len()];
        for index in sequence(fleet, settings, rooms) {
            per_node[index] += 1;
        }
        per_node
    }

    #[test]
    fn lowest_cpu_wins_a_single_room() {
        let fleet = fleet(3);
        read(&fleet, &[0.7, 0.2, 0.5]);
        let chosen = choose(&fleet.snapshot(), &Settings::default(), 42, Instant::now()).unwrap();
        assert_eq!(
            chosen,
            Chosen {
                index: 1,
                over_max_cpu: false
            }
        );
    }

    #[test]
    fn a_burst_between_readings_does_not_herd() {
        let fleet = fleet(4);
        read(&fleet, &[0.30, 0.10, 0.30, 0.30]);
        let per_node = place(&fleet, &Settings::default(), 200);
        // The idle node fills up to the others' level first, then everyone shares.
        assert!(per_node[1] > per_node[0], "{per_node:?}");
        let cap = (1.25f64 * 200.0 / 4.0).ceil() as usize;
        assert!(
            per_node.iter().all(|&n| n <= cap),
            "{per_node:?} over the bounded share {cap}"
        );
        assert!(per_node.iter().all(|&n| n > 20), "{per_node:?}");
    }

    #[test]
    fn bounded_load_caps_a_node_that_looks_idle() {
        let fleet = fleet(3);
        read(&fleet, &[0.0, 0.8, 0.8]);
        let settings = Settings {
            room_cost: Some(0.0001),
            ..Settings::default()
        };
        let per_node = place(&fleet, &settings, 300);
        assert!(per_node[0] <= 125, "{per_node:?}");
    }

    #[test]
    fn nodes_over_max_cpu_take_rooms_only_when_all_are() {
        let fleet = fleet(3);
        read(&fleet, &[0.90, 0.95, 0.50]);
        let settings = Settings {
            room_cost: Some(0.0),
            ..Settings::default()
        };
        let chosen = choose(&fleet.snapshot(), &settings, 7, Instant::now()).unwrap();
        assert_eq!(
            chosen,
            Chosen {
                index: 2,
                over_max_cpu: false
            }
        );
        read(&fleet, &[0.90, 0.95, 0.99]);
        let chosen = choose(&fleet.snapshot(), &settings, 7, Instant::now()).unwrap();
        assert_eq!(
            chosen,
            Chosen {
                index: 0,
                over_max_cpu: true
            }
        );
    }

    #[test]
    fn unhealthy_and_draining_nodes_are_no_candidates() {
        let fleet = fleet(3);
        read(&fleet, &[0.1, 0.2, 0.3]);
        let state = fleet.snapshot();
        state.nodes()[0]
            .live
            .record_check(false, crate::fleet::Thresholds { fall: 1, rise: 1 });
        fleet.set_draining("n1", true);
        for room in 0..50u64 {
            let chosen = choose(
                &fleet.snapshot(),
                &Settings::default(),
                room,
                Instant::now(),
            )
            .unwrap();
            assert_eq!(chosen.index, 2);
        }
        fleet.set_draining("n2", true);
        assert_eq!(
            choose(&fleet.snapshot(), &Settings::default(), 1, Instant::now()),
            None
        );
    }

    #[test]
    fn nodes_without_data_rank_last() {
        let fleet = fleet(3);
        fleet.set_cpu(
            HashMap::from([("10.0.0.2:80".to_owned(), 0.6)]),
            Instant::now(),
        );
        let chosen = choose(&fleet.snapshot(), &Settings::default(), 3, Instant::now()).unwrap();
        assert_eq!(chosen.index, 2);
    }

    #[test]
    fn no_data_spreads_by_hash_within_the_bound() {
        let fleet = fleet(3);
        let per_node = place(&fleet, &Settings::default(), 300);
        assert!(
            per_node.iter().all(|&n| (75..=125).contains(&n)),
            "{per_node:?}"
        );
    }

    #[test]
    fn same_snapshot_same_choices() {
        let (a, b) = (fleet(5), fleet(5));
        for f in [&a, &b] {
            read(f, &[0.3, 0.25, 0.4, 0.25, 0.5]);
        }
        assert_eq!(
            sequence(&a, &Settings::default(), 100),
            sequence(&b, &Settings::default(), 100)
        );
    }

    /// The placement rule written plainly, one node at a time: the oracle for the fast paths.
    fn reference(state: &FleetState, settings: &Settings, hash: u64) -> Option<Chosen> {
        let cpu = state.cpu(Instant::now());
        let cost = settings
            .room_cost
            .or(state.learned_room_cost())
            .unwrap_or(DEFAULT_ROOM_COST);
        let candidates: Vec<(usize, Option<f64>, u32, u64)> = (0..state.nodes().len())
            .filter(|&i| state.nodes()[i].live.available())
            .map(|i| {
                let live = &state.nodes()[i].live;
                let estimate = cpu
                    .get(i)
                    .copied()
                    .flatten()
                    .map(|b| b + cost * f64::from(live.placed_since_reading()));
                (i, estimate, live.rooms(), state.nodes()[i].seed)
            })
            .collect();
        let under = |e: Option<f64>| e.is_none_or(|e| e < settings.max_cpu);
        let any_under = candidates.iter().any(|c| under(c.1));
        let rooms: u64 = candidates.iter().map(|c| u64::from(c.2)).sum();
        let cap = (settings.balance_factor * (rooms + 1) as f64 / candidates.len() as f64).ceil();
        let rank = |e: Option<f64>| e.unwrap_or(f64::INFINITY);
        let best = |bounded: bool| {
            candidates
                .iter()
                .filter(|c| !any_under || under(c.1))
                .filter(|c| !bounded || f64::from(c.2) + 1.0 <= cap)
                .min_by(|a, b| {
                    rank(a.1).total_cmp(&rank(b.1)).then_with(|| {
                        let (wa, wb) =
                            (rendezvous::weight(hash, a.3), rendezvous::weight(hash, b.3));
                        wb.cmp(&wa).then(a.0.cmp(&b.0))
                    })
                })
                .map(|c| c.0)
        };
        let index = best(true).or_else(|| best(false))?;
        Some(Chosen {
            index,
            over_max_cpu: !any_under,
        })
    }

    #[test]
    fn large_fleets_decide_as_a_full_scan_would() {
        decides_as_reference(Settings::default());
    }

    #[test]
    fn a_fleet_filling_past_max_cpu_decides_as_a_full_scan_would() {
        // Most nodes start over max_cpu and the rest cross it along the way.
        decides_as_reference(Settings {
            max_cpu: 0.4,
            room_cost: Some(0.02),
            ..Settings::default()
        });
    }

    /// 4,000 placements on 300 nodes, with drains, an undrain, a failure and a recovery, a node
    /// removed while it holds rooms and registered again, and rooms ending along the way, each
    /// checked against [`reference`].
    fn decides_as_reference(settings: Settings) {
        let fleet = fleet(300);
        // Coarse readings, so that many nodes tie.
        let cpu: Vec<f64> = (0..300)
            .map(|i| 0.1 + f64::from(i * 7 % 40) / 50.0)
            .collect();
        read(&fleet, &cpu);
        let mut placed = Vec::new();
        for room in 0..4_000u64 {
            match room {
                1_000 => {
                    fleet.set_draining("n0", true);
                    fleet.set_draining("n40", true);
                }
                2_000 => {
                    fleet.set_draining("n0", false);
                    let t = crate::fleet::Thresholds { fall: 1, rise: 1 };
                    fleet.snapshot().nodes()[7].live.record_check(false, t);
                }
                2_500 => assert!(fleet.remove_node("n50")),
                3_000 => {
                    fleet.set_draining("n40", false);
                }
                3_200 => {
                    let spec = NodeSpec::new("n50", "http://10.0.0.50:80").unwrap();
                    fleet.put_node(spec).unwrap();
                }
                3_500 => {
                    let t = crate::fleet::Thresholds { fall: 1, rise: 1 };
                    let state = fleet.snapshot();
                    let back = state.node("n7").unwrap().live.record_check(true, t);
                    assert_eq!(back, Some(true));
                }
                _ => {}
            }
            let state = fleet.snapshot();
            let hash = rendezvous::seed(&room.to_le_bytes());
            let expected = reference(&state, &settings, hash);
            if room % 2 == 0 {
                // A wrong first guess of the cap must cost time, never the answer.
                state.set_cap_hint(room % 17);
            }
            let chosen = choose(&state, &settings, hash, Instant::now());
            assert_eq!(chosen, expected, "room {room}");
            let node = &state.nodes()[chosen.unwrap().index];
            node.live.room_placed();
            placed.push(node.id.clone());
            // Rooms also end, so that the cap moves both ways between decisions.
            if room % 3 == 0 {
                let gone = placed.swap_remove((room as usize * 31) % placed.len());
                state.live(gone.as_str()).unwrap().room_left();
            }
        }
        let over = fleet
            .snapshot()
            .nodes()
            .iter()
            .filter(|n| n.live.placed_since_reading() > 0)
            .count();
        assert!(over > 200, "rooms spread over {over} nodes");
    }

    #[test]
    fn rooms_of_a_removed_node_leave_the_bounded_load_cap() {
        // Rooms cost nothing and n0 reads idle, so n0 takes every room the cap allows: the cap
        // decides every few rooms, and it must stop counting n3's rooms once n3 is gone.
        // More nodes than are read whole, so that decisions go through the short list.
        let nodes = shortlist::SCAN_WHOLE_UP_TO + 8;
        let fleet = fleet(nodes);
        let mut cpu = vec![0.5; nodes];
        cpu[0] = 0.1;
        read(&fleet, &cpu);
        let settings = Settings {
            room_cost: Some(0.0),
            ..Settings::default()
        };
        let n3 = fleet.snapshot().nodes()[3].live.clone();
        for _ in 0..60 {
            n3.room_placed();
        }
        for room in 0..400u64 {
            if room == 150 {
                assert!(fleet.remove_node("n3"));
            }
            let state = fleet.snapshot();
            let hash = rendezvous::seed(&room.to_le_bytes());
            let expected = reference(&state, &settings, hash);
            assert_eq!(
                choose(&state, &settings, hash, Instant::now()),
                expected,
                "room {room}"
            );
            state.nodes()[expected.unwrap().index].live.room_placed();
        }
    }

    #[test]
    fn a_state_read_before_a_reading_still_decides_as_a_full_scan_would() {
        // A request can hold the state of the last reading while the next one is taken, which
        // sets every node's rooms-placed-since-reading back to zero: estimates fall, most for
        // the nodes that took the most rooms. Dear rooms and a loose cap make them many.
        let fleet = fleet(100);
        let cpu: Vec<f64> = (0..100)
            .map(|i| 0.1 + f64::from(i * 37 % 100) / 500.0)
            .collect();
        read(&fleet, &cpu);
        let settings = Settings {
            room_cost: Some(0.05),
            balance_factor: 10.0,
            ..Settings::default()
        };
        let state = fleet.snapshot();
        for room in 0..400u64 {
            // Not when the cap moves (every ten rooms), which would send it to a full scan anyway.
            if room == 205 {
                read(&fleet, &cpu);
            }
            let hash = rendezvous::seed(&room.to_le_bytes());
            let expected = reference(&state, &settings, hash);
            let chosen = choose(&state, &settings, hash, Instant::now());
            assert_eq!(chosen, expected, "room {room}");
            state.nodes()[expected.unwrap().index].live.room_placed();
        }
    }

    #[test]
    fn a_wide_tie_is_decided_over_the_whole_fleet() {
        // Every node reads the same and rooms cost nothing: one tie of 100 nodes, which
        // rendezvous hashing must settle over all of them.
        let fleet = fleet(100);
        read(&fleet, &[0.5; 100]);
        let settings = Settings {
            room_cost: Some(0.0),
            ..Settings::default()
        };
        let state = fleet.snapshot();
        for room in 0..500u64 {
            let hash = rendezvous::seed(&room.to_le_bytes());
            let expected = reference(&state, &settings, hash);
            assert_eq!(choose(&state, &settings, hash, Instant::now()), expected);
            state.nodes()[expected.unwrap().index].live.room_placed();
        }
    }

    #[test]
    fn empty_fleet_has_no_choice() {
        assert_eq!(
            choose(
                &fleet(0).snapshot(),
                &Settings::default(),
                1,
                Instant::now()
            ),
            None
        );
    }
}
