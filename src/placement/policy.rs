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
use std::time::Instant;

use crate::fleet::{FleetState, Load, Slot};
use crate::placement::rendezvous;

/// Busy CPU assumed per room until the fleet teaches a better figure.
pub const DEFAULT_ROOM_COST: f64 = 0.01;

/// How placement weighs the fleet; the `[placement]` config section.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Nodes at or above this estimated busy fraction take no new rooms while others are below.
    pub max_cpu: f64,
    /// Bounded-load factor: a node's rooms may exceed the mean by at most this factor.
    pub balance_factor: f64,
    /// Busy CPU per room; `None` learns it from the fleet.
    pub room_cost: Option<f64>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_cpu: 0.85,
            balance_factor: 1.25,
            room_cost: None,
        }
    }
}

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
    Some(base + cost * f64::from(state.slots()[index].live.placed_since_reading()))
}

/// Ranks of the placement order, as the top bit of a node's key (see [`key`]).
const OVER_MAX_CPU: u64 = 1 << 63;
/// The key of a node that cannot take rooms.
const UNAVAILABLE: u64 = u64::MAX;

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

/// Among the nodes `eligible` lets through, the one with the lowest key, ties to the highest
/// rendezvous weight for the room; with its key.
fn leader(
    state: &FleetState,
    keys: &[u64],
    room_hash: u64,
    eligible: impl Fn(usize, u64) -> bool,
) -> Option<(usize, u64)> {
    let nodes = keys.iter().copied().enumerate();
    let lowest = nodes
        .clone()
        .filter(|&(i, k)| eligible(i, k))
        .map(|(_, k)| k)
        .min()?;
    let slots = state.slots();
    nodes
        .filter(|&(i, k)| k == lowest && eligible(i, k))
        .max_by_key(|&(i, _)| (rendezvous::weight(room_hash, slots[i].seed), Reverse(i)))
}

/// Inputs every key of one decision shares.
struct Keying {
    /// Added to every base: infinite when the reading is stale, which is no reading.
    stale: f64,
    cost: f64,
    max_cpu: f64,
}

impl Keying {
    fn key(&self, slot: &Slot) -> (u64, Load) {
        let load = slot.load();
        let estimate =
            slot.base() + self.stale + self.cost * f64::from(load.placed_since_reading());
        (key(estimate, load.available(), self.max_cpu), load)
    }
}

/// Chooses the node for a new room with this hash; `None` when no node is healthy and undrained.
///
/// A scan computes every node's key and totals the candidates' rooms for the bounded-load cap;
/// usually the lowest key is within the cap and the decision is made. Otherwise the best node
/// within the cap is picked from the same keys.
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
        max_cpu: settings.max_cpu,
    };
    KEYS.with(|cell| {
        let mut keys = cell.take();
        keys.clear();
        let (mut count, mut rooms) = (0u64, 0u64);
        for slot in state.slots() {
            let (key, load) = keying.key(slot);
            keys.push(key);
            let available = u64::from(load.available());
            count += available;
            rooms += u64::from(load.rooms()) * available;
        }
        let chosen = decide(state, settings, &keys, (count, rooms), room_hash);
        cell.set(keys);
        chosen
    })
}

/// The leader (lowest key) if it is within the bounded-load cap, else the best node within it.
fn decide(
    state: &FleetState,
    settings: &Settings,
    keys: &[u64],
    (count, rooms): (u64, u64),
    room_hash: u64,
) -> Option<Chosen> {
    let (first, key) = leader(state, keys, room_hash, |_, k| k != UNAVAILABLE)?;
    let over_max_cpu = key >= OVER_MAX_CPU;
    let within_cap = cap_check(state, settings, count, rooms);
    let index = if within_cap(first) {
        first
    } else {
        leader(state, keys, room_hash, |i, k| {
            k != UNAVAILABLE && (over_max_cpu || k < OVER_MAX_CPU) && within_cap(i)
        })
        // The cap can only exclude everyone when max_cpu already removed the lightest nodes.
        .map_or(first, |(i, _)| i)
    };
    Some(Chosen {
        index,
        over_max_cpu,
    })
}

/// Whether a node may take one more room with `rooms` over `count` candidates.
fn cap_check<'a>(
    state: &'a FleetState,
    settings: &Settings,
    count: u64,
    rooms: u64,
) -> impl Fn(usize) -> bool + 'a {
    let cap = (settings.balance_factor * (rooms + 1) as f64 / count.max(1) as f64).ceil();
    move |i: usize| f64::from(state.slots()[i].load().rooms()) + 1.0 <= cap
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
        let fleet = fleet(300);
        // Coarse readings, so that many nodes tie.
        let cpu: Vec<f64> = (0..300)
            .map(|i| 0.1 + f64::from(i * 7 % 40) / 50.0)
            .collect();
        read(&fleet, &cpu);
        let settings = Settings::default();
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
                3_000 => {
                    fleet.set_draining("n40", false);
                }
                _ => {}
            }
            let state = fleet.snapshot();
            let hash = rendezvous::seed(&room.to_le_bytes());
            let expected = reference(&state, &settings, hash);
            let chosen = choose(&state, &settings, hash, Instant::now());
            assert_eq!(chosen, expected, "room {room}");
            state.nodes()[chosen.unwrap().index].live.room_placed();
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
