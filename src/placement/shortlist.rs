//! Placement's short list: the few nodes the next new rooms can go to, so that placing a room
//! on a large fleet reads a few dozen nodes instead of all of them, and still picks exactly the
//! node a full scan (`policy::choose`) would.
//!
//! A full scan knows every node's key (its estimate, see `policy`) and the bounded-load cap.
//! From it the list keeps the nodes under the cap with the lowest keys (the *members*: at least
//! as many as `members_for` gives for the fleet's size when there are that many, whole groups
//! of equal keys), and a `bound`: every member's key is below it, every other node under the
//! cap has a key at or above it. Then, for as long as none of the following has happened, the
//! lowest member under the cap now is the node a full scan would choose, provided its key is
//! still below `bound` (and below `max_cpu`):
//!
//! - Keys of the nodes outside the list only rise: an estimate changes only by rooms placed on
//!   its node, or by a fresh CPU reading, which bumps the fleet's change counter
//!   ([`Totals::changes`]).
//! - A node can become a candidate, or stop being one, only by health or drain flipping; that
//!   also changes the mean the cap is taken from, and it bumps the change counter.
//! - A node left out only for being at the cap takes rooms again when the cap rises (each
//!   decision works the cap out again from the fleet's room total, and gives up if it rose) or
//!   when its own rooms fall below the cap. The nodes left out that way whose keys are below
//!   `bound` are *watched* (`Words::watch`): a room leaving one bumps the change counter.
//!
//! When the list cannot tell — a change counted, every member's key up to `bound`, the cap
//! risen — the decision scans the whole fleet as before and makes a new list. A scan of a
//! thousand nodes thus happens once per few dozen rooms instead of once per room. Concurrent
//! decisions read words while others update them, exactly as concurrent full scans do; the
//! rule is exact for decisions that do not overlap.

use std::sync::Arc;

use crate::fleet::{FleetState, Totals, Words};
use crate::placement::policy::{cap, heaviest, under_cap, Keying, Lowest, Settings, UNAVAILABLE};

/// Fleets this small are read whole on every decision: a list would save little.
pub(super) const SCAN_WHOLE_UP_TO: usize = 32;

/// Members a list aims for on a fleet of `nodes`. Each decision reads every member, and a list
/// lasts until about that many rooms have been placed, so a decision costs about
/// `members + k × nodes / members` node reads, least at the square root of `k × nodes`. A scan
/// costs more per node than a list decision per member (it also picks the members and sets
/// watch marks); measured, `k` is near 4, hence twice the root. At 1,000 nodes that is 62;
/// sizes of 32, 64, 96 and 128 measured with two threads placing at once put 64 best (1.6–2.3 µs
/// a new room against 1.9–2.6 µs with 32, back to back) and larger no better.
pub(super) fn members_for(nodes: usize) -> usize {
    (2 * nodes.isqrt()).clamp(16, 64)
}

/// Members at most, when a group of equal keys straddles the first [`members_for`].
const MAX_MEMBERS: usize = 256;
/// Nodes whose rooms the fleet's total must not count (unavailable, or removed while they
/// still hold rooms) at most; with more, placement keeps scanning the fleet.
const MAX_EXCLUDED: usize = 64;

/// The nodes the next new rooms can go to; see the module docs.
#[derive(Debug)]
pub struct Shortlist {
    /// The settings it was made for.
    settings: Settings,
    /// The fleet's change counter when the scan began.
    changes: u64,
    /// Candidates (available nodes) then; they stay the same while `changes` does.
    count: u64,
    /// The bounded-load cap then.
    cap: u64,
    /// Every member's key was below it; every other node under the cap had a key at or above.
    bound: u64,
    /// Indices into the state's nodes.
    members: Box<[u32]>,
    /// Words of the nodes whose rooms are in the fleet's total but not the candidates'.
    excluded: Box<[(Arc<Words>, usize)]>,
}

impl Shortlist {
    /// The node a full scan would choose for a room with this hash, when the list can tell.
    pub(super) fn choose(
        &self,
        state: &FleetState,
        settings: &Settings,
        keying: &Keying,
        room_hash: u64,
        totals: &Totals,
    ) -> Option<usize> {
        if self.settings != *settings || totals.changes() != self.changes {
            return None;
        }
        let excluded: u64 = self
            .excluded
            .iter()
            .map(|(words, at)| u64::from(words.load(*at).rooms()))
            .sum();
        let cap = cap(
            settings,
            self.count,
            totals.rooms().saturating_sub(excluded),
        );
        if cap > self.cap {
            return None;
        }
        let slots = state.slots();
        let key_within = |i: usize| {
            let slot = &slots[i];
            let load = slot.load();
            keying.raw_key(slot.base(), load) | u64::from(!under_cap(load, cap)).wrapping_neg()
        };
        let mut lowest = Lowest::NONE;
        for &i in self.members.iter() {
            lowest.add(i as usize, key_within(i as usize));
        }
        if !lowest.found() || lowest.key >= self.bound || lowest.key >= settings.max_cpu.to_bits() {
            return None;
        }
        if !lowest.tied {
            return Some(lowest.index);
        }
        // Every node with that key is a member: the others' keys are at or above `bound`.
        let tied = self
            .members
            .iter()
            .map(|&i| i as usize)
            .filter(|&i| key_within(i) == lowest.key);
        Some(heaviest(state, room_hash, tied).unwrap_or(lowest.index))
    }

    /// A list from a full scan's raw keys (`UNAVAILABLE` for nodes that cannot take rooms),
    /// exact cap and lowest key within it, begun when the fleet's change counter read
    /// `changes`; `None` when a list would not help (more than 256 nodes tied for the lowest
    /// key, too many excluded nodes). Sets the watch marks.
    pub(super) fn make(
        state: &FleetState,
        settings: &Settings,
        keys: &[u64],
        cap: u64,
        lowest: Lowest,
        changes: u64,
    ) -> Option<Shortlist> {
        let slots = state.slots();
        // A tie that wide must be settled over the whole fleet, by rendezvous weight.
        if lowest.tied
            && (slots.iter().zip(keys))
                .filter(|&(slot, &key)| key == lowest.key && under_cap(slot.load(), cap))
                .nth(MAX_MEMBERS)
                .is_some()
        {
            return None;
        }
        let mut excluded = Vec::new();
        let mut count = 0u64;
        let mut under = Vec::with_capacity(slots.len());
        let mut capped = vec![false; slots.len()];
        for (i, (slot, &key)) in slots.iter().zip(keys).enumerate() {
            if key == UNAVAILABLE {
                let (words, at) = slot.word();
                excluded.push((words.clone(), at));
                continue;
            }
            count += 1;
            if under_cap(slot.load(), cap) {
                under.push((key, i as u32));
            } else {
                capped[i] = true;
            }
        }
        for live in state.removed().iter().filter(|live| live.rooms() > 0) {
            let (words, at) = live.word();
            excluded.push((words.clone(), at));
        }
        if excluded.len() > MAX_EXCLUDED {
            return None;
        }
        let (members, bound) = lowest_keys(&mut under, members_for(state.slots().len()));
        if members.is_empty() {
            return None;
        }
        let watch = u32::try_from(cap).unwrap_or(u32::MAX);
        for ((slot, &key), capped) in slots.iter().zip(keys).zip(capped) {
            slot.watch(if capped && key < bound { watch } else { 0 });
        }
        Some(Shortlist {
            settings: *settings,
            changes,
            count,
            cap,
            bound,
            members: members.into_boxed_slice(),
            excluded: excluded.into_boxed_slice(),
        })
    }
}

/// The members among `(key, index)` pairs and the bound above their keys: the `wanted` lowest
/// keys, extended to the whole group of the next key when that keeps them at most
/// [`MAX_MEMBERS`] (so that a tie can be settled among members), else cut below it.
fn lowest_keys(under: &mut [(u64, u32)], wanted: usize) -> (Vec<u32>, u64) {
    if under.len() <= wanted {
        return (under.iter().map(|&(_, i)| i).collect(), UNAVAILABLE);
    }
    // After this, the keys before `wanted` are at most `next` and those after at least.
    let next = under.select_nth_unstable(wanted).1 .0;
    let below = under[..wanted].iter().filter(|&&(k, _)| k < next);
    let ties = under.iter().filter(|&&(k, _)| k == next).count();
    if below.clone().count() + ties > MAX_MEMBERS {
        return (below.map(|&(_, i)| i).collect(), next);
    }
    let members = under
        .iter()
        .filter(|&&(k, _)| k <= next)
        .map(|&(_, i)| i)
        .collect();
    let bound = under[wanted + 1..]
        .iter()
        .map(|&(k, _)| k)
        .filter(|&k| k > next)
        .min()
        .unwrap_or(UNAVAILABLE);
    (members, bound)
}
