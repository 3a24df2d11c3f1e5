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

use std::cmp::Ordering;
use std::time::Instant;

use crate::fleet::FleetState;
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

/// One node as placement sees it, gathered once per decision.
struct Candidate {
    index: usize,
    estimate: Option<f64>,
    rooms: u32,
    seed: u64,
}

/// Chooses the node for a new room with this hash; `None` when no node is healthy and undrained.
pub fn choose(
    state: &FleetState,
    settings: &Settings,
    room_hash: u64,
    now: Instant,
) -> Option<Chosen> {
    let cpu = state.cpu(now);
    let cost = settings
        .room_cost
        .or(state.learned_room_cost())
        .unwrap_or(DEFAULT_ROOM_COST);
    CANDIDATES.with(|cell| {
        let mut candidates = cell.take();
        candidates.clear();
        let (mut rooms, mut any_under) = (0u64, false);
        for (index, slot) in state.slots().iter().enumerate() {
            let live = &slot.live;
            if !live.available() {
                continue;
            }
            let estimate = cpu
                .get(index)
                .copied()
                .flatten()
                .map(|base| base + cost * f64::from(live.placed_since_reading()));
            let node_rooms = live.rooms();
            rooms += u64::from(node_rooms);
            any_under |= estimate.is_none_or(|e| e < settings.max_cpu);
            candidates.push(Candidate {
                index,
                estimate,
                rooms: node_rooms,
                seed: slot.seed,
            });
        }
        let chosen = pick(&candidates, settings, rooms, any_under, room_hash);
        cell.set(candidates);
        chosen.map(|index| Chosen {
            index,
            over_max_cpu: !any_under,
        })
    })
}

thread_local! {
    /// Reused per thread so that placement allocates nothing once warm.
    static CANDIDATES: std::cell::Cell<Vec<Candidate>> = const { std::cell::Cell::new(Vec::new()) };
}

fn pick(
    candidates: &[Candidate],
    settings: &Settings,
    rooms: u64,
    any_under: bool,
    room_hash: u64,
) -> Option<usize> {
    if candidates.is_empty() {
        return None;
    }
    let cap = (settings.balance_factor * (rooms + 1) as f64 / candidates.len() as f64).ceil();
    let allowed = |c: &Candidate| !any_under || c.estimate.is_none_or(|e| e < settings.max_cpu);
    let best = |bounded: bool| {
        let mut best: Option<(&Candidate, Option<u64>)> = None;
        for c in candidates {
            if !allowed(c) || (bounded && f64::from(c.rooms) + 1.0 > cap) {
                continue;
            }
            best = match best {
                None => Some((c, None)),
                Some((b, b_weight)) => match by_estimate(c.estimate, b.estimate) {
                    Ordering::Less => Some((c, None)),
                    Ordering::Greater => Some((b, b_weight)),
                    // Weights only for ties: most decisions never hash.
                    Ordering::Equal => {
                        let b_weight =
                            b_weight.unwrap_or_else(|| rendezvous::weight(room_hash, b.seed));
                        let c_weight = rendezvous::weight(room_hash, c.seed);
                        if c_weight > b_weight {
                            Some((c, Some(c_weight)))
                        } else {
                            Some((b, Some(b_weight)))
                        }
                    }
                },
            };
        }
        best.map(|(c, _)| c.index)
    };
    // The bound can only exclude everyone when max_cpu already removed the lightest nodes.
    best(true).or_else(|| best(false))
}

/// Nodes with data first, lower estimate first.
fn by_estimate(a: Option<f64>, b: Option<f64>) -> Ordering {
    match (a, b) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
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
