//! Placement of a new room: which node takes it. One function, [`choose`], over one fleet state.
//!
//! 1. **Candidates** are nodes that are healthy and not draining.
//! 2. **Estimated CPU** is a node's last Prometheus reading plus what the rooms placed on it since
//!    that reading will add: `room_cost` ÷ its `weight`, per room. Readings are up to one interval
//!    old; without the estimate every room of a burst would land on the node that looked least
//!    busy when it was read (herding). `room_cost` (the cost on a node of weight 1) is
//!    configured, or learned from the fleet.
//! 3. **The herding bound** (consistent hashing with bounded loads, Mirrokni et al. 2016, applied
//!    to the stale window): with `P` rooms placed on the candidates since their last reading, a
//!    node may take the room only while its rooms placed since its reading + 1 ≤
//!    ⌈`balance_factor` × (P + 1) × s ÷ S⌉, where its share `s` is its `weight` × its spare CPU
//!    under `max_cpu` at the reading, and `S` the candidates' sum. So a window's rooms may go
//!    to a node at most 1.25 times as fast as its size and headroom warrant, however low a
//!    wrong estimate makes it look: the cap on herding. It says nothing about rooms placed
//!    before the reading: with fresh readings the least busy node takes the next room, and an
//!    idle or newly added node fills up window after window until its CPU meets the others'.
//!    When no candidate qualifies (shares and counts drift apart as nodes come and go), the
//!    bound yields.
//! 4. **`max_cpu`** and the node caps (`max_rooms`, `max_participants`): candidates whose
//!    estimate is at or over `max_cpu`, or that are at a cap (full), take the room only when
//!    every candidate is; then the least busy does (the caller warns and counts it). Without
//!    CPU data, full nodes likewise take rooms only when all are full. A node within the
//!    bound but over `max_cpu` yields to one over the bound but under `max_cpu`.
//! 5. **Order**: lowest estimate first, nodes without a reading after those with one; equal
//!    estimates by the room's weighted rendezvous score ([`rendezvous::score`]).
//! 6. **No CPU data at all** (no reading, or the last one older than `max_staleness`): weighted
//!    rendezvous hashing bounded on total rooms, each node holding at most
//!    ⌈`balance_factor` × (R + 1) × w ÷ W⌉ of the candidates' `R` rooms, `W` their total weight
//!    (HAProxy's `hash-balance-factor`, by weight).
//!
//! Nothing depends on arrival order or randomness, so replicas that read the same snapshot and
//! saw the same rooms choose the same node.
//!
//! [`choose`] reads the candidates twice over the fleet state's [`placing`](FleetState::placing)
//! list: once in fleet order for the totals the bound needs, once in ascending order of reading
//! ([`by_reading`](FleetState::by_reading)) to pick, which stops at the first node whose
//! reading is above the best estimate found (an estimate is never below its reading). About
//! 7–10 µs at 1,000 nodes on the development VM, paid by the first request of a room only.

use std::cmp::Ordering;
use std::time::Instant;

use crate::fleet::{FleetState, Node, Placing};
use crate::rendezvous;

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

/// Busy CPU one room adds to a node of weight 1.
fn room_cost(state: &FleetState, settings: &Settings) -> f64 {
    (settings.room_cost)
        .or(state.learned_room_cost())
        .unwrap_or(DEFAULT_ROOM_COST)
}

/// A node's estimated busy CPU now (reading + cost of rooms placed since), for display; `None`
/// without a fresh reading.
pub fn estimate(
    state: &FleetState,
    settings: &Settings,
    index: usize,
    now: Instant,
) -> Option<f64> {
    let reading = state.cpu(now).get(index).copied().flatten()?;
    let node = &state.nodes()[index];
    Some(estimated(node, reading, room_cost(state, settings)))
}

fn estimated(node: &Node, reading: f64, cost: f64) -> f64 {
    reading + cost * f64::from(node.live.placed_since_reading()) / node.weight()
}

/// What placement reads of one candidate, gathered in one pass over the fleet state.
struct Candidate<'s> {
    /// Its seed, weight, caps and live counters.
    node: &'s Placing,
    /// Its index into the fleet state's nodes.
    index: usize,
    /// Rooms placed on it since its last reading.
    placed: u32,
    /// Its last CPU reading; infinite without a fresh one.
    reading: f64,
    /// Its estimated CPU, never below the reading; infinite without a fresh reading, so that
    /// it ranks after those with one.
    estimate: f64,
    /// How much of a window's rooms it is fit to take, relative to the others: its weight times
    /// its spare CPU under `max_cpu` at the reading (a node without one counts as idle).
    share: f64,
}

impl Candidate<'_> {
    /// Under `max_cpu` (or without a reading) and under its caps.
    fn under(&self, max_cpu: f64) -> bool {
        (self.estimate < max_cpu || self.estimate.is_infinite()) && !self.full()
    }

    /// At its `max_rooms` or `max_participants`.
    fn full(&self) -> bool {
        self.node.full()
    }
}

/// The nodes that may take a new room (healthy and undrained) among `order` (indices into the
/// fleet state's nodes), as placement reads them; each pass over it reads the fleet state again
/// (no list is kept: a thousand-node list allocated per placement cost more than reading the
/// nodes twice).
fn candidates<'s>(
    state: &'s FleetState,
    settings: &Settings,
    cpu: &'s [Option<f64>],
    order: impl Iterator<Item = usize> + 's,
) -> impl Iterator<Item = Candidate<'s>> + 's {
    let (cost, max_cpu) = (room_cost(state, settings), settings.max_cpu);
    let placing = state.placing();
    order.filter_map(move |index| {
        let node = &placing[index];
        if !node.live.available() {
            return None;
        }
        let (weight, placed) = (node.weight, node.live.placed_since_reading());
        let reading = cpu.get(index).copied().flatten();
        Some(Candidate {
            node,
            index,
            placed,
            reading: reading.unwrap_or(f64::INFINITY),
            estimate: reading.map_or(f64::INFINITY, |r| r + cost * f64::from(placed) / weight),
            share: weight * (max_cpu - reading.unwrap_or(0.0)).max(MIN_SPARE),
        })
    })
}

/// Whether a node holding `count` rooms may take one more under a bound of `bound` (a count
/// that may have a fraction): `count + 1 ≤ ⌈bound⌉`, which for a whole `count` is
/// `count < bound`.
fn within(count: u32, bound: f64) -> bool {
    f64::from(count) < bound
}

/// The first of `pool` in placement order: lowest `rank`, ties by the room's weighted
/// rendezvous score. `pool` comes in ascending order of `floor`, which is never above `rank`:
/// the scan ends at the first candidate whose floor is above the leader's rank, as neither it
/// nor any after it can lead.
fn best<'s>(
    room_hash: u64,
    pool: impl Iterator<Item = Candidate<'s>>,
    rank: impl Fn(&Candidate) -> f64,
    floor: impl Fn(&Candidate) -> f64,
) -> Option<usize> {
    // The leader is kept as the few plain numbers a comparison needs, not as a `Candidate`:
    // carrying the whole record from one step to the next made the compiler shuffle its bytes
    // through overlapping stack slots, which tripled the time of a scan (store-forwarding
    // stalls, seen in `perf annotate`).
    let score = |seed, weight| rendezvous::score(room_hash, seed, weight);
    let mut leader: Option<(usize, f64, u64, f64)> = None;
    for c in pool {
        if leader.is_some_and(|(_, lead, ..)| floor(&c) > lead) {
            break;
        }
        let rank = rank(&c);
        let ahead = leader.is_none_or(|(_, lead, seed, weight)| match rank.total_cmp(&lead) {
            Ordering::Less => true,
            Ordering::Greater => false,
            Ordering::Equal => score(c.node.seed, c.node.weight) > score(seed, weight),
        });
        if ahead {
            leader = Some((c.index, rank, c.node.seed, c.node.weight));
        }
    }
    leader.map(|(index, ..)| index)
}

/// The least spare CPU a candidate's share counts, so that a node read at `max_cpu` still has
/// a share (it takes rooms only when every node is that busy).
const MIN_SPARE: f64 = 0.01;

/// Chooses the node for a new room whose rendezvous hash is `room_hash`; `None` when no node is
/// healthy and undrained.
pub fn choose(
    state: &FleetState,
    settings: &Settings,
    room_hash: u64,
    now: Instant,
) -> Option<Chosen> {
    let cpu = state.cpu(now);
    let all = || candidates(state, settings, cpu, 0..state.placing().len());
    if all().all(|c| c.estimate.is_infinite()) {
        return Some(Chosen {
            index: hashed(settings, room_hash, all)?,
            over_max_cpu: false,
        });
    }
    let max_cpu = settings.max_cpu;
    // Usually settled by the first candidate.
    let any_under = all().any(|c| c.under(max_cpu));
    let (mut shares, mut placed) = (0.0, 0);
    for c in all() {
        shares += c.share;
        placed += u64::from(c.placed);
    }
    let allowed = |c: &Candidate| !any_under || c.under(max_cpu);
    let per_share = settings.balance_factor * (placed + 1) as f64 / shares;
    // Least busy first, so that the pick can stop at the first reading above the best estimate.
    let ranked = || candidates(state, settings, cpu, state.by_reading().iter().copied());
    let bounded = ranked().filter(|c| allowed(c) && within(c.placed, per_share * c.share));
    let (estimate, reading) = (|c: &Candidate| c.estimate, |c: &Candidate| c.reading);
    let index = best(room_hash, bounded, estimate, reading)
        .or_else(|| best(room_hash, ranked().filter(allowed), estimate, reading))?;
    Some(Chosen {
        index,
        over_max_cpu: !any_under,
    })
}

/// Placement without CPU data: the candidate with the room's highest weighted rendezvous score
/// among those within the bound on total rooms; `None` when no node is healthy and undrained.
/// While the fleet and its room counts stay as they are, a room gets the same node every time.
pub fn by_hash(state: &FleetState, settings: &Settings, room_hash: u64) -> Option<usize> {
    let all = || candidates(state, settings, &[], 0..state.placing().len());
    hashed(settings, room_hash, all)
}

fn hashed<'s, I: Iterator<Item = Candidate<'s>>>(
    settings: &Settings,
    room_hash: u64,
    all: impl Fn() -> I,
) -> Option<usize> {
    let (mut weights, mut rooms) = (0.0, 0);
    for c in all() {
        weights += c.node.weight;
        rooms += u64::from(c.node.live.rooms());
    }
    let per_weight = settings.balance_factor * (rooms + 1) as f64 / weights;
    let any_open = all().any(|c| !c.full());
    let open = |c: &Candidate| !any_open || !c.full();
    let bounded =
        all().filter(|c| open(c) && within(c.node.live.rooms(), per_weight * c.node.weight));
    let (same, never) = (|_: &Candidate| 0.0, |_: &Candidate| f64::NEG_INFINITY);
    best(room_hash, bounded, same, never)
        .or_else(|| best(room_hash, all().filter(open), same, never))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeSpec;
    use crate::fleet::Fleet;
    use std::collections::HashMap;
    use std::time::Duration;

    fn fleet_of(weights: &[f64]) -> Fleet {
        let specs = (weights.iter().enumerate())
            .map(|(i, &weight)| {
                let mut spec =
                    NodeSpec::new(&format!("n{i}"), &format!("http://10.0.0.{i}:80")).unwrap();
                spec.weight = weight;
                spec
            })
            .collect();
        Fleet::new(specs, Duration::from_secs(90))
    }

    fn fleet(n: usize) -> Fleet {
        fleet_of(&vec![1.0; n])
    }

    fn read(fleet: &Fleet, cpu: &[f64]) {
        let values = (cpu.iter().enumerate())
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

    /// The pick as a plain scan of every candidate in fleet order, without the early stop of
    /// the scan by reading: what [`choose`] must always agree with.
    fn scan_all(state: &FleetState, settings: &Settings, room_hash: u64) -> Option<usize> {
        let cpu = state.cpu(Instant::now());
        let all = || candidates(state, settings, cpu, 0..state.placing().len());
        if all().all(|c| c.estimate.is_infinite()) {
            return hashed(settings, room_hash, all);
        }
        let max_cpu = settings.max_cpu;
        let any_under = all().any(|c| c.under(max_cpu));
        let shares: f64 = all().map(|c| c.share).sum();
        let placed: u64 = all().map(|c| u64::from(c.placed)).sum();
        let per_share = settings.balance_factor * (placed + 1) as f64 / shares;
        let allowed = |c: &Candidate| !any_under || c.under(max_cpu);
        let score = |c: &Candidate| rendezvous::score(room_hash, c.node.seed, c.node.weight);
        let first = |pool: Vec<Candidate>| {
            let order = |a: &Candidate, b: &Candidate| {
                (a.estimate.total_cmp(&b.estimate)).then(score(b).total_cmp(&score(a)))
            };
            pool.into_iter().min_by(order).map(|c| c.index)
        };
        let bounded = all().filter(|c| allowed(c) && within(c.placed, per_share * c.share));
        first(bounded.collect()).or_else(|| first(all().filter(allowed).collect()))
    }

    proptest::proptest! {
        #[test]
        fn the_scan_by_reading_picks_what_a_scan_of_every_node_picks(
            nodes in proptest::collection::vec(
                // weight, reading (index into READINGS; past its end: none), rooms placed since
                // the reading, draining, capped at two rooms
                (1u8..=3, 0usize..8, 0u32..6, proptest::bool::weighted(0.15), proptest::bool::weighted(0.15)),
                1..30,
            ),
        ) {
            // Few distinct values, so that estimates tie; some at or over `max_cpu`.
            const READINGS: [f64; 6] = [0.1, 0.3, 0.3, 0.5, 0.8, 0.95];
            let specs = (nodes.iter().enumerate())
                .map(|(i, &(weight, _, _, _, capped))| {
                    let mut spec =
                        NodeSpec::new(&format!("n{i}"), &format!("http://10.0.0.{i}:80")).unwrap();
                    spec.weight = f64::from(weight);
                    spec.max_rooms = capped.then_some(2);
                    spec
                })
                .collect();
            let fleet = Fleet::new(specs, Duration::from_secs(90));
            let cpu = (nodes.iter().enumerate())
                .filter_map(|(i, &(_, r, ..))| Some((format!("10.0.0.{i}:80"), *READINGS.get(r)?)))
                .collect::<HashMap<_, _>>();
            fleet.set_cpu(cpu, Instant::now());
            let state = fleet.snapshot();
            for (node, &(_, _, placed, draining, _)) in state.nodes().iter().zip(&nodes) {
                (0..placed).for_each(|_| node.live.room_placed());
                node.live.set_draining(draining);
            }
            let settings = Settings::default();
            for room in 0..40u64 {
                let hash = rendezvous::seed(&room.to_le_bytes());
                let chosen = choose(&state, &settings, hash, Instant::now()).map(|c| c.index);
                proptest::prop_assert_eq!(chosen, scan_all(&state, &settings, hash), "room {}", room);
            }
        }
    }

    #[test]
    fn a_node_at_its_cap_takes_no_new_room_until_every_node_is() {
        let specs = (0..2)
            .map(|i| {
                let mut spec =
                    NodeSpec::new(&format!("n{i}"), &format!("http://10.0.0.{i}:80")).unwrap();
                spec.max_rooms = (i == 0).then_some(2);
                spec.max_participants = (i == 1).then_some(10);
                spec
            })
            .collect();
        let fleet = Fleet::new(specs, Duration::from_secs(90));
        read(&fleet, &[0.2, 0.6]);
        let settings = Settings::default();
        // n0 reads far less busy, but holds at most two rooms.
        assert_eq!(sequence(&fleet, &settings, 4), [0, 0, 1, 1]);
        // n1 at its participants cap too: both full, the least busy takes it, as over max_cpu.
        fleet.snapshot().nodes()[1].live.set_participants(Some(10));
        let chosen = choose(&fleet.snapshot(), &settings, 7, Instant::now()).unwrap();
        assert!(chosen.over_max_cpu);
        assert_eq!(chosen.index, 0);
        // Without CPU data, full nodes are passed over as well.
        fleet.snapshot().nodes()[1].live.set_participants(Some(3));
        let state = fleet.snapshot();
        for room in 0..20u64 {
            assert_eq!(
                by_hash(&state, &settings, rendezvous::seed(&room.to_le_bytes())),
                Some(1)
            );
        }
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
    fn with_fresh_readings_the_least_busy_node_takes_the_next_room_whatever_its_rooms() {
        // n1 holds three times the others' rooms but reads far less busy (a bigger machine, or
        // quiet rooms): the bound on total rooms used to keep it from taking more.
        let fleet = fleet(3);
        let state = fleet.snapshot();
        for (node, rooms) in [(0, 100), (1, 300), (2, 100)] {
            for _ in 0..rooms {
                state.nodes()[node].live.room_placed();
            }
        }
        read(&fleet, &[0.7, 0.2, 0.7]);
        let chosen = choose(&fleet.snapshot(), &Settings::default(), 9, Instant::now());
        assert_eq!(chosen.unwrap().index, 1);
    }

    #[test]
    fn an_idle_node_fills_up_until_its_cpu_meets_the_others() {
        let fleet = fleet(4);
        let settings = Settings {
            room_cost: Some(0.01),
            ..Settings::default()
        };
        let mut cpu = vec![0.6, 0.6, 0.6, 0.1];
        // Twenty refresh windows of ten rooms each; each reading shows what the rooms cost.
        for _ in 0..20 {
            read(&fleet, &cpu);
            for index in sequence(&fleet, &settings, 10) {
                cpu[index] += 0.01;
            }
        }
        let spread =
            cpu.iter().copied().fold(0.0, f64::max) - cpu.iter().copied().fold(1.0, f64::min);
        assert!(spread <= 0.03, "{cpu:?}");
        assert!(cpu[3] > 0.6, "{cpu:?}");
    }

    #[test]
    fn a_burst_between_readings_does_not_herd() {
        let fleet = fleet(4);
        read(&fleet, &[0.30, 0.10, 0.30, 0.30]);
        // Rooms look free: only the bound keeps the idle-looking node from taking them all.
        let settings = Settings {
            room_cost: Some(0.0001),
            ..Settings::default()
        };
        let per_node = place(&fleet, &settings, 200);
        // Shares by spare CPU under max_cpu (0.85): 0.55, 0.75, 0.55, 0.55 of 2.4.
        let cap = |spare: f64| (1.25 * 200.0 * spare / 2.4).ceil() as usize;
        assert!(per_node[1] <= cap(0.75), "{per_node:?}");
        assert!(per_node[1] >= cap(0.75) - 2, "{per_node:?}");
        assert!(per_node.iter().all(|&n| n > 35), "{per_node:?}");
    }

    #[test]
    fn weights_share_a_burst_by_capacity() {
        let fleet = fleet_of(&[1.0, 3.0]);
        read(&fleet, &[0.3, 0.3]);
        let per_node = place(&fleet, &Settings::default(), 400);
        assert!((290..=310).contains(&per_node[1]), "{per_node:?}");
    }

    #[test]
    fn without_data_rooms_spread_by_weighted_hash_within_the_bound() {
        let fleet = fleet(3);
        let per_node = place(&fleet, &Settings::default(), 300);
        assert!(
            per_node.iter().all(|&n| (75..=125).contains(&n)),
            "{per_node:?}"
        );
        let weighted = fleet_of(&[1.0, 2.0, 1.0]);
        let per_node = place(&weighted, &Settings::default(), 400);
        assert!((150..=250).contains(&per_node[1]), "{per_node:?}");
        assert!(per_node[0] <= 125 && per_node[2] <= 125, "{per_node:?}");
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
    fn the_bound_yields_rather_than_send_a_room_over_max_cpu() {
        // n0 took the window's rooms so far (it is over the bound); n1 is within it but busy.
        let fleet = fleet(2);
        read(&fleet, &[0.2, 0.9]);
        let settings = Settings {
            room_cost: Some(0.0),
            ..Settings::default()
        };
        let per_node = place(&fleet, &settings, 20);
        assert_eq!(per_node, [20, 0]);
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
            );
            assert_eq!(chosen.unwrap().index, 2);
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
        let state = fleet(0).snapshot();
        assert_eq!(
            choose(&state, &Settings::default(), 1, Instant::now()),
            None
        );
    }
}
