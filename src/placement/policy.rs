//! Placement of a new room: which node takes it. One function, [`choose`], over one fleet state.
//!
//! 1. **Candidates** are nodes that are healthy and not draining.
//! 2. **Estimated CPU** is a node's last Prometheus reading plus what came to it since that
//!    reading: `room_cost` ÷ its `weight` per room placed on it, or, when more, per room's worth
//!    of participants who joined it (signalling WebSockets opened through this router, over the
//!    fleet's participants per placed room, learned). Readings are up to one interval old;
//!    without the estimate every room of a burst would land on the node that looked least busy
//!    when it was read (herding), and a large room, or people joining older rooms, would show
//!    only a reading later. `room_cost` (the cost on a node of weight 1) is configured, or
//!    learned from the fleet.
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
//! 5. **Order**: lowest estimate after taking a large room first ([`LARGE_ROOM`] times
//!    `room_cost`, ÷ the node's `weight`), nodes without a reading after those with one; equal
//!    ranks by the room's weighted rendezvous score ([`rendezvous::score`]). A room's size is
//!    unknown until its people arrive, and a large one costs a node of weight 1 four times what
//!    it costs a node of weight 4: ranking as if each room might be large keeps the smaller
//!    nodes a little cooler (3 × `room_cost` for weight 1 beside weight 4, 3 % of CPU by
//!    default), so that a large room landing on one late in a burst overloads it less
//!    (`benches/HISTORY.md`, "Headroom for a large room"). Between nodes of one weight the
//!    term is the same for each and changes nothing.
//! 6. **No CPU data at all** (no reading, or the last one older than `max_staleness`): weighted
//!    rendezvous hashing bounded on total rooms, each node holding at most
//!    ⌈`balance_factor` × (R + 1) × w ÷ W⌉ of the candidates' `R` rooms, `W` their total weight
//!    (HAProxy's `hash-balance-factor`, by weight).
//!
//! Nothing depends on arrival order or randomness, so replicas that read the same snapshot and
//! saw the same rooms and participants choose the same node. (Replicas behind one load balancer
//! each see their share of both; where they disagree, the shared pin store settles the room.)
//!
//! [`choose`] reads the fleet state's [`placing`](FleetState::placing) list in fleet order, a
//! pass for the totals the bound needs and a pass to pick, paid by the first request of a room
//! only (a room's requests cost about a thousand times that). Scanning in order of reading and
//! stopping at the first reading above the best estimate saved under 1 % of what a room costs,
//! and is not done (`benches/HISTORY.md`, "A new room scans in fleet order again").

use std::cmp::Ordering;
use std::time::Instant;

use crate::fleet::{FleetState, NodeLive, Placing};
use crate::rendezvous;

/// Busy CPU assumed per room until the fleet teaches a better figure.
pub const DEFAULT_ROOM_COST: f64 = 0.01;

/// The room each candidate is ranked as taking, in rooms of `room_cost`: a room of about 18
/// people where rooms average 4 or 5. Over 90 simulated fleets of mixed sizes, 4 to 6 gave the
/// most even fleets and the fewest overloaded small nodes; 3 and 8 did worse
/// (`benches/HISTORY.md`, "Headroom for a large room").
pub const LARGE_ROOM: f64 = 4.0;

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
    let (cost, joins_per_room) = (room_cost(state, settings), state.learned_joins_per_room());
    Some(estimated(
        &node.live,
        node.weight(),
        reading,
        cost,
        joins_per_room,
    ))
}

/// A node's reading plus `cost` ÷ its `weight` for each room's worth that came to it since.
fn estimated(
    live: &NodeLive,
    weight: f64,
    reading: f64,
    cost: f64,
    joins_per_room: Option<f64>,
) -> f64 {
    reading + cost * arrived(live, joins_per_room) / weight
}

/// What came to a node since its last reading, in rooms: the rooms placed on it, or the
/// participants who joined it over the fleet's participants per placed room, whichever is
/// more. A large room, or people joining older rooms, shows as soon as its people connect,
/// not a reading later.
fn arrived(live: &NodeLive, joins_per_room: Option<f64>) -> f64 {
    let placed = f64::from(live.placed_since_reading());
    match joins_per_room {
        Some(per_room) if per_room > 0.0 => {
            placed.max(f64::from(live.joined_since_reading()) / per_room)
        }
        _ => placed,
    }
}

/// What placement reads of one candidate, gathered in one pass over the fleet state.
struct Candidate<'s> {
    /// Its seed, weight, caps and live counters.
    node: &'s Placing,
    /// Its index into the fleet state's nodes.
    index: usize,
    /// Rooms placed on it since its last reading.
    placed: u32,
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

/// The nodes that may take a new room (healthy and undrained), in fleet order, as placement
/// reads them; each pass over it reads the fleet state again (no list is kept: a thousand-node
/// list allocated per placement cost more than reading the nodes twice).
fn candidates<'s>(
    state: &'s FleetState,
    settings: &Settings,
    cpu: &'s [Option<f64>],
) -> impl Iterator<Item = Candidate<'s>> + 's {
    let (cost, max_cpu) = (room_cost(state, settings), settings.max_cpu);
    let joins_per_room = state.learned_joins_per_room();
    let placing = state.placing();
    placing.iter().enumerate().filter_map(move |(index, node)| {
        if !node.live.available() {
            return None;
        }
        let (weight, placed) = (node.weight, node.live.placed_since_reading());
        let reading = cpu.get(index).copied().flatten();
        Some(Candidate {
            node,
            index,
            placed,
            estimate: reading.map_or(f64::INFINITY, |r| {
                estimated(&node.live, weight, r, cost, joins_per_room)
            }),
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
/// rendezvous score.
fn best<'s>(
    room_hash: u64,
    pool: impl Iterator<Item = Candidate<'s>>,
    rank: impl Fn(&Candidate) -> f64,
) -> Option<usize> {
    // The leader is kept as the few plain numbers a comparison needs, not as a `Candidate`:
    // carrying the whole record from one step to the next made the compiler shuffle its bytes
    // through overlapping stack slots, and a scan waited on store-forwarding stalls
    // (`benches/HISTORY.md`, "A new room at 1,000 nodes: 41 µs back to under 10").
    let score = |seed, weight| rendezvous::score(room_hash, seed, weight);
    let mut leader: Option<(usize, f64, u64, f64)> = None;
    for c in pool {
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
    let all = || candidates(state, settings, cpu);
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
    let bounded = all().filter(|c| allowed(c) && within(c.placed, per_share * c.share));
    let large_room = LARGE_ROOM * room_cost(state, settings);
    let rank = |c: &Candidate| c.estimate + large_room / c.node.weight;
    let index =
        best(room_hash, bounded, rank).or_else(|| best(room_hash, all().filter(allowed), rank))?;
    Some(Chosen {
        index,
        over_max_cpu: !any_under,
    })
}

/// Placement without CPU data: the candidate with the room's highest weighted rendezvous score
/// among those within the bound on total rooms; `None` when no node is healthy and undrained.
/// While the fleet and its room counts stay as they are, a room gets the same node every time.
pub fn by_hash(state: &FleetState, settings: &Settings, room_hash: u64) -> Option<usize> {
    let all = || candidates(state, settings, &[]);
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
    let same = |_: &Candidate| 0.0;
    best(room_hash, bounded, same).or_else(|| best(room_hash, all().filter(open), same))
}

#[cfg(test)]
mod tests;
