//! Placement's short list: the nodes the next new rooms can go to, so that placing a room on a
//! large fleet reads a few nodes instead of all of them, and still picks exactly the node a
//! full scan (`policy::choose`) would.
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
//! thousand nodes thus happens once per few hundred rooms instead of once per room.
//!
//! Members' keys only rise too, so a decision need not read them all: each thread keeps the
//! members in a heap by the keys it last read (`Order`) and reads only those whose keys rose
//! since, usually the one or two nodes the last rooms went to. Concurrent decisions read words
//! while others update them, exactly as concurrent full scans do; the rule is exact for
//! decisions that do not overlap.

use std::cell::RefCell;
use std::sync::Arc;

use crate::fleet::{FleetState, Totals, Words};
use crate::placement::policy::{cap, heaviest, under_cap, Keying, Lowest, Settings, UNAVAILABLE};

/// Fleets this small are read whole on every decision: a list would save little.
pub(super) const SCAN_WHOLE_UP_TO: usize = 32;

/// Members a list aims for on a fleet of `nodes`. A decision reads only the members whose keys
/// rose since its thread last looked (see [`Order`]), a few steps of a heap each, so a larger
/// list costs a decision little; what it costs is making it (a scan of the fleet) and each
/// thread's first read of it, both once per list, and a list lasts until about as many rooms
/// as it has members have been placed. At 1,000 nodes, two threads placing at once, back to
/// back: 1.4–1.8 µs a new room with 64 members, 1.4–1.6 with 256, 1.2–1.5 with 512 (before
/// the heap, 64 members read whole on every decision: 1.7–1.8 µs). Single-threaded, callgrind
/// counts 3,250 instructions of placement per room with 64 members, 1,600 with 256, 1,400
/// with 512 and 1,850 with every node.
pub(super) fn members_for(nodes: usize) -> usize {
    (16 * nodes.isqrt()).clamp(16, 512)
}

/// Members at most, when a group of equal keys straddles the first [`members_for`].
const MAX_MEMBERS: usize = 1024;
/// Nodes tied for the lowest key at most: a decision reads every one of them, so a wider tie
/// is left to full scans, which settle it over the whole fleet.
const MAX_TIED: usize = 256;
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
    ///
    /// Reads the members through this thread's [`Order`] of them: a member whose key still
    /// reads as the one kept for it, first in that order, has the lowest key of all members,
    /// since keys only rise while the list holds. So a decision reads the few members whose
    /// keys rose since this thread last looked (the nodes it and the others placed rooms on),
    /// not every member.
    pub(super) fn choose(
        list: &Arc<Shortlist>,
        state: &FleetState,
        settings: &Settings,
        keying: &Keying,
        room_hash: u64,
        totals: &Totals,
    ) -> Option<usize> {
        if list.settings != *settings || totals.changes() != list.changes {
            return None;
        }
        let excluded: u64 = list
            .excluded
            .iter()
            .map(|(words, at)| u64::from(words.load(*at).rooms()))
            .sum();
        let cap = cap(
            settings,
            list.count,
            totals.rooms().saturating_sub(excluded),
        );
        if cap > list.cap {
            return None;
        }
        let slots = state.slots();
        // A member's key, and whether it is under the cap now.
        let read = |i: u32| {
            let slot = &slots[i as usize];
            let load = slot.load();
            (keying.raw_key(slot.base(), load), under_cap(load, cap))
        };
        ORDER.with(|cell| {
            // Only a nested call finds it borrowed; a full scan then decides.
            let mut cell = cell.try_borrow_mut().ok()?;
            let order = match &mut *cell {
                Some(order) if Arc::ptr_eq(&order.list, list) => order,
                other => other.insert(Order::new(list, read)),
            };
            let Some(key) = order.lowest(read) else {
                // Read afresh next time, should the list still hold.
                *cell = None;
                return None;
            };
            if key >= list.bound || key >= settings.max_cpu.to_bits() {
                return None;
            }
            match order.tied[..] {
                [only] => Some(only as usize),
                // Every node with that key is a member: the others' keys are at or above
                // `bound`.
                ref tied => heaviest(state, room_hash, tied.iter().map(|&i| i as usize)),
            }
        })
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
                .nth(MAX_TIED)
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

thread_local! {
    /// This thread's order of the members of the list it last decided from.
    static ORDER: RefCell<Option<Order>> = const { RefCell::new(None) };
}

/// One thread's view of a list's members: those under the cap by their keys as this thread
/// last read them, and those it found at the cap.
///
/// While a list holds (its fleet's change counter unchanged), a member's key only rises: rooms
/// placed on its node raise its estimate, and anything else that changes one bumps the counter.
/// So a kept key is at most the member's key now, and the member with the lowest kept key,
/// if its key still reads as kept, is the lowest of all: every other member's key now is at
/// least its kept key. A decision thus reads the few members whose keys rose since this thread
/// last looked (the nodes it and the other threads placed rooms on), each put back in order
/// in a few steps, instead of every member. Rooms leaving a member may bring it back under the
/// cap, and the cap may rise again up to the list's, so members at the cap are read again on
/// every decision (there are few: a member reaches the cap only after many more rooms than
/// its neighbours).
struct Order {
    /// The list this is of; kept so that its address names it.
    list: Arc<Shortlist>,
    /// Members under the cap with their keys as last read, a binary min-heap: the entries at
    /// `2j + 1` and `2j + 2` are at least the one at `j`. A list fills its lowest members
    /// until their keys are all within one room's cost, so a member that took a room moves
    /// past most others: a heap moves it in a few steps where a sorted list shifts them all.
    heap: Vec<(u64, u32)>,
    /// Members at the cap when last read.
    capped: Vec<u32>,
    /// The members tied for the lowest key, after [`Order::lowest`].
    tied: Vec<u32>,
    /// Scratch for [`Order::lowest`]: heap positions to look at.
    walk: Vec<usize>,
}

/// What the top of an [`Order`]'s heap turned out to be.
enum Top {
    /// Its key, read now as kept.
    Key(u64),
    /// No member is under the cap.
    Empty,
    /// A key read lower than kept: a CPU reading landing during the decision resets the rooms
    /// placed since the last one just before it bumps the change counter. The order can no
    /// longer tell.
    Fell,
}

impl Order {
    /// The members in order, read afresh.
    fn new(list: &Arc<Shortlist>, read: impl Fn(u32) -> (u64, bool)) -> Order {
        let (mut heap, mut capped) = (Vec::with_capacity(list.members.len()), Vec::new());
        for &i in list.members.iter() {
            match read(i) {
                (key, true) => heap.push((key, i)),
                (_, false) => capped.push(i),
            }
        }
        // A sorted list is a heap.
        heap.sort_unstable();
        Order {
            list: list.clone(),
            heap,
            capped,
            tied: Vec::new(),
            walk: Vec::new(),
        }
    }

    /// The lowest key of a member under the cap now, with the members that have it in
    /// [`Order::tied`]; `None` when there is none or the order can no longer tell (see
    /// [`Top::Fell`]; the caller then drops it).
    fn lowest(&mut self, read: impl Fn(u32) -> (u64, bool)) -> Option<u64> {
        let Order {
            heap,
            capped,
            tied,
            walk,
            ..
        } = self;
        // Members back under the cap rejoin at their key now.
        let mut j = 0;
        while j < capped.len() {
            match read(capped[j]) {
                (key, true) => push(heap, (key, capped.swap_remove(j))),
                (_, false) => j += 1,
            }
        }
        tied.clear();
        let Top::Key(key) = top(heap, capped, &read) else {
            return None;
        };
        tied.push(heap[0].1);
        // Kept keys only grow down the heap: with both children's above it, no member ties.
        if heap.iter().skip(1).take(2).all(|&(k, _)| k > key) {
            return Some(key);
        }
        // A tie: the members kept at that key are a subtree from the root. Walk it, reading
        // each; one whose key rose goes down its own subtree, which leaves the rest of the
        // walk as it was, and is looked at again where it was.
        walk.clear();
        walk.extend([1, 2]);
        while let Some(at) = walk.pop() {
            let Some(&(kept, i)) = heap.get(at) else {
                continue;
            };
            if kept != key {
                continue;
            }
            match recheck(heap, capped, at, &read) {
                Recheck::Kept(_) => {
                    tied.push(i);
                    walk.extend([2 * at + 1, 2 * at + 2]);
                }
                Recheck::Fell => return None,
                Recheck::Rose => walk.push(at),
                // Rare: the last entry took its place, and may be one already walked; start
                // again.
                Recheck::Capped => return self.lowest(read),
            }
        }
        Some(key)
    }
}

/// Reads the heap's top member until one reads as kept, moving each whose key rose to its place
/// and setting aside each at the cap.
fn top(
    heap: &mut Vec<(u64, u32)>,
    capped: &mut Vec<u32>,
    read: impl Fn(u32) -> (u64, bool),
) -> Top {
    loop {
        if heap.is_empty() {
            return Top::Empty;
        }
        match recheck(heap, capped, 0, &read) {
            Recheck::Kept(key) => return Top::Key(key),
            Recheck::Fell => return Top::Fell,
            Recheck::Rose | Recheck::Capped => {}
        }
    }
}

/// What reading a heap entry's member again found.
enum Recheck {
    /// Its key as kept, under the cap.
    Kept(u64),
    /// A key lower than kept (see [`Top::Fell`]).
    Fell,
    /// A higher key: the entry now holds it and has moved down to its place.
    Rose,
    /// At the cap: set aside, and the heap's last entry moved into its place.
    Capped,
}

/// Reads the member of the heap entry at `at` again and brings the heap up to date with it.
fn recheck(
    heap: &mut Vec<(u64, u32)>,
    capped: &mut Vec<u32>,
    at: usize,
    read: impl Fn(u32) -> (u64, bool),
) -> Recheck {
    let (kept, i) = heap[at];
    match read(i) {
        (key, true) if key == kept => Recheck::Kept(key),
        (key, true) if key < kept => Recheck::Fell,
        (key, true) => {
            heap[at].0 = key;
            sift_down(heap, at);
            Recheck::Rose
        }
        (_, false) => {
            heap.swap_remove(at);
            if at < heap.len() {
                sift_down(heap, at);
                sift_up(heap, at);
            }
            capped.push(i);
            Recheck::Capped
        }
    }
}

/// Adds an entry to a min-heap.
fn push(heap: &mut Vec<(u64, u32)>, entry: (u64, u32)) {
    let at = heap.len();
    heap.push(entry);
    sift_up(heap, at);
}

/// Moves the entry at `at` up a min-heap to its place.
fn sift_up(heap: &mut [(u64, u32)], mut at: usize) {
    while at > 0 {
        let parent = (at - 1) / 2;
        if heap[parent] <= heap[at] {
            break;
        }
        heap.swap(parent, at);
        at = parent;
    }
}

/// Moves the entry at `at` down a min-heap to its place.
fn sift_down(heap: &mut [(u64, u32)], mut at: usize) {
    loop {
        let left = 2 * at + 1;
        let Some(&first) = heap.get(left) else {
            return;
        };
        let child = match heap.get(left + 1) {
            Some(&right) if right < first => left + 1,
            _ => left,
        };
        if heap[at] <= heap[child] {
            return;
        }
        heap.swap(at, child);
        at = child;
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cell::{Cell, RefCell};

    /// A list of `members` nodes numbered from 0, for an [`Order`] of it.
    fn list(members: u32) -> Arc<Shortlist> {
        Arc::new(Shortlist {
            settings: Settings::default(),
            changes: 0,
            count: u64::from(members),
            cap: 1,
            bound: UNAVAILABLE,
            members: (0..members).collect(),
            excluded: Box::new([]),
        })
    }

    /// The lowest key under the cap and the members that have it, read whole.
    fn whole(now: &[(u64, bool)]) -> Option<(u64, Vec<u32>)> {
        let key = now.iter().filter(|m| m.1).map(|m| m.0).min()?;
        let tied = (0..now.len() as u32)
            .filter(|&i| now[i as usize] == (key, true))
            .collect();
        Some((key, tied))
    }

    fn sorted(mut tied: Vec<u32>) -> Vec<u32> {
        tied.sort_unstable();
        tied
    }

    proptest! {
        /// Keys rise and members leave and rejoin the cap in any order: each decision finds
        /// what reading every member would.
        #[test]
        fn an_order_finds_the_lowest_member_as_reading_all_would(
            start in prop::collection::vec((0u64..6, any::<bool>()), 1..40),
            steps in prop::collection::vec((any::<prop::sample::Index>(), 0u64..3, any::<bool>()), 0..80),
        ) {
            let now = RefCell::new(start);
            let read = |i: u32| now.borrow()[i as usize];
            let mut order = Order::new(&list(now.borrow().len() as u32), read);
            for (member, rise, flip) in steps {
                let expected = whole(&now.borrow());
                let found = order.lowest(read).map(|key| (key, sorted(order.tied.clone())));
                prop_assert_eq!(found, expected);
                let mut now = now.borrow_mut();
                let at = member.index(now.len());
                let entry = &mut now[at];
                entry.0 += rise;
                entry.1 ^= flip;
            }
        }
    }

    #[test]
    fn a_decision_reads_only_the_members_whose_keys_rose() {
        let now = RefCell::new((0..64u64).map(|i| (10 * i, true)).collect::<Vec<_>>());
        let reads = Cell::new(0);
        let read = |i: u32| {
            reads.set(reads.get() + 1);
            now.borrow()[i as usize]
        };
        let mut order = Order::new(&list(64), read);
        for room in 0..64 {
            reads.set(0);
            let lowest = order.lowest(read).expect("a member under the cap");
            let chosen = order.tied[..] == [room];
            assert!(chosen, "room {room} went to {:?}", order.tied);
            assert_eq!(lowest, 10 * u64::from(room));
            // The one that took the last room, then the next one: not all 64.
            assert!(reads.get() <= 2, "room {room}: {} reads", reads.get());
            now.borrow_mut()[room as usize].0 += 10_000;
        }
    }

    #[test]
    fn a_key_read_lower_than_kept_makes_the_order_give_up() {
        let now = RefCell::new(vec![(5, true), (7, true)]);
        let read = |i: u32| now.borrow()[i as usize];
        let mut order = Order::new(&list(2), read);
        assert_eq!(order.lowest(read), Some(5));
        // What a reading landing under a decision looks like: an estimate fell.
        now.borrow_mut()[0].0 = 3;
        assert_eq!(order.lowest(read), None);
    }

    #[test]
    fn no_member_under_the_cap_is_no_answer() {
        let now = RefCell::new(vec![(5, false), (7, false)]);
        let read = |i: u32| now.borrow()[i as usize];
        let mut order = Order::new(&list(2), read);
        assert_eq!(order.lowest(read), None);
        now.borrow_mut()[1].1 = true;
        assert_eq!(
            order.lowest(read),
            Some(7),
            "a member back under the cap rejoins"
        );
    }
}
