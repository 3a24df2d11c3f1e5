//! The pin table's index: what a pinned request reads, sixteen bytes a room, four rooms to a
//! cache line, read with plain atomic loads (no lock, no read-modify-write).
//!
//! DESIGN note. A pinned decision with many pins costs its cache misses: on this project's
//! 2-core VM one miss past the last-level cache is 180–320 ns. A general concurrent map costs two
//! or three in a row (a shard lock, the control bytes, the slot). Here a room is found with one:
//! its slot holds what routing needs — a 48-bit fingerprint of the room's name, the node's
//! number, the idle clock and the request count — and the slot's line follows from the
//! fingerprint. The name itself lives in the pin table's cold part (for listings and
//! snapshots) and is not compared: two rooms with one fingerprint share one pin, so they meet on
//! one node. That can never split a room; with a keyed 64-bit hash it happens to one new room in
//! about 2^48 / (live pins) (one in 280 million with a million pins).
//!
//! Writers of one room are serialised by the pin table (a lock per shard of fingerprints), and
//! take free slots with a compare-and-swap, so two rooms never take one slot. Slots go from empty
//! to taken to gone (a tombstone) and back to taken, never to empty, so a reader that meets an
//! empty slot knows the room is not further on. A table is never resized in place: the pin table
//! builds a bigger one and publishes it (see `pins`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use crate::fleet::NodeId;

use super::pins::IndexHint;

/// A slot never taken.
pub(crate) const EMPTY: u64 = 0;
/// A slot whose pin was removed; free to take again, but not the end of a search.
pub(crate) const GONE: u64 = 1;

const NUMBER_BITS: u32 = 16;
const FINGERPRINT_BITS: u32 = 64 - NUMBER_BITS;

/// The most node names one pin table can number (see [`Numbers`]).
pub(crate) const MAX_NODES: usize = 1 << NUMBER_BITS;

/// Bits of a data word holding the request count; the idle clock takes the rest.
const COUNT_BITS: u32 = 24;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
/// The largest clock a data word holds: 2^40 ms, about 34 years.
const CLOCK_MAX: u64 = (1 << (64 - COUNT_BITS)) - 1;

/// A room's 48-bit fingerprint, never zero, so that a slot's key word is never [`EMPTY`] or
/// [`GONE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Fingerprint(u64);

impl Fingerprint {
    /// The fingerprint of a room's 64-bit keyed hash.
    pub(crate) fn of(hash: u64) -> Fingerprint {
        Fingerprint((hash >> NUMBER_BITS).max(1))
    }

    /// The slot key of this room pinned to node `number`.
    pub(crate) fn key(self, number: u16) -> u64 {
        self.0 << NUMBER_BITS | u64::from(number)
    }

    /// Which of `shards` (a power of two) serialises this room's writers: the top bits, which a
    /// table's line index uses last.
    pub(crate) fn shard(self, shards: usize) -> usize {
        (self.0 >> (FINGERPRINT_BITS - shards.trailing_zeros())) as usize
    }

    /// The fingerprint in a taken slot's key word.
    pub(crate) fn of_key(key: u64) -> Fingerprint {
        Fingerprint(key >> NUMBER_BITS)
    }
}

/// The node number in a taken slot's key word.
pub(crate) fn number(key: u64) -> u16 {
    key as u16
}

/// A slot's data word: when the pin was last used (pin clock, ms) and how many requests it routed.
pub(crate) fn data(last_seen_ms: u64, requests: u64) -> u64 {
    last_seen_ms.min(CLOCK_MAX) << COUNT_BITS | requests.min(COUNT_MAX)
}

/// The idle clock of a data word.
pub(crate) fn last_seen(data: u64) -> u64 {
    data >> COUNT_BITS
}

/// The request count of a data word.
pub(crate) fn requests(data: u64) -> u64 {
    data & COUNT_MAX
}

/// A data word after one more request at `now_ms` (the count saturates).
pub(crate) fn touched(data: u64, now_ms: u64) -> u64 {
    self::data(now_ms, requests(data) + 1)
}

/// One room's slot.
#[derive(Default)]
pub(crate) struct Slot {
    /// [`EMPTY`], [`GONE`], or the room's fingerprint and node number.
    pub(crate) key: AtomicU64,
    /// See [`data`].
    pub(crate) data: AtomicU64,
}

const SLOTS_PER_LINE: usize = 4;

#[derive(Default)]
#[repr(align(64))]
struct Line([Slot; SLOTS_PER_LINE]);

/// Where a writer found a room, or where it may put it.
pub(crate) enum Place<'t> {
    /// The room's slot and its key word.
    Taken(&'t Slot, u64),
    /// The first free slot on the room's path and the key word seen there ([`EMPTY`] or [`GONE`]).
    Free(&'t Slot, u64),
    /// No free slot anywhere on the path: the table must grow first.
    Full,
}

/// A fixed-size open-addressing table of slots; a room is looked for from the line its
/// fingerprint names, onward, until an empty slot.
pub(crate) struct Table {
    lines: Box<[Line]>,
    mask: usize,
}

impl Table {
    /// A table of at least `slots` slots (rounded up to a power of two lines).
    pub(crate) fn with_slots(slots: usize) -> Table {
        let lines = slots.div_ceil(SLOTS_PER_LINE).next_power_of_two();
        Table {
            lines: (0..lines).map(|_| Line::default()).collect(),
            mask: lines - 1,
        }
    }

    /// How many slots it has.
    pub(crate) fn slots(&self) -> usize {
        self.lines.len() * SLOTS_PER_LINE
    }

    /// The lines on a room's path, in order, once round the table at most. Callers walk each
    /// line's slots in a loop of their own: one iterator flattening the slots took 15 more
    /// instructions a pinned lookup (callgrind, `pinned/1000_nodes/10000`).
    fn path(&self, room: Fingerprint) -> impl Iterator<Item = &[Slot; SLOTS_PER_LINE]> {
        let start = room.0 as usize;
        (0..self.lines.len()).map(move |i| &self.lines[start.wrapping_add(i) & self.mask].0)
    }

    /// The room's slot and key word, if the room is in the table.
    pub(crate) fn find(&self, room: Fingerprint) -> Option<(&Slot, u64)> {
        for line in self.path(room) {
            for slot in line {
                let key = slot.key.load(Ordering::Acquire);
                if key == EMPTY {
                    return None;
                }
                if Fingerprint::of_key(key) == room {
                    return Some((slot, key));
                }
            }
        }
        None
    }

    /// For a writer holding the room's shard: the room's slot, or the first free one on its path.
    pub(crate) fn place(&self, room: Fingerprint) -> Place<'_> {
        let mut free = None;
        for slot in self.path(room).flatten() {
            let key = slot.key.load(Ordering::Acquire);
            if key == EMPTY {
                return match free {
                    Some((slot, seen)) => Place::Free(slot, seen),
                    None => Place::Free(slot, EMPTY),
                };
            }
            if key == GONE {
                free.get_or_insert((slot, GONE));
            } else if Fingerprint::of_key(key) == room {
                return Place::Taken(slot, key);
            }
        }
        match free {
            Some((slot, seen)) => Place::Free(slot, seen),
            None => Place::Full,
        }
    }

    /// Every taken slot, in table order.
    pub(crate) fn taken(&self) -> impl Iterator<Item = (&Slot, u64)> {
        self.lines
            .iter()
            .flat_map(|line| &line.0)
            .filter_map(|slot| {
                let key = slot.key.load(Ordering::Acquire);
                (key != EMPTY && key != GONE).then_some((slot, key))
            })
    }

    /// Copies a slot into a table no one else sees yet; false if it is full.
    pub(crate) fn copy_in(&self, key: u64, data: u64) -> bool {
        match self.place(Fingerprint::of_key(key)) {
            Place::Free(slot, _) => {
                slot.data.store(data, Ordering::Relaxed);
                slot.key.store(key, Ordering::Release);
                true
            }
            Place::Taken(..) | Place::Full => false,
        }
    }
}

const CHUNK: usize = 256;

/// One numbered node: its id and where it stood in the fleet state that last routed to it.
#[derive(Default)]
struct Numbered {
    id: OnceLock<NodeId>,
    hint: IndexHint,
}

/// Small numbers for node names, so that a slot holds its node in 16 bits. A name keeps its
/// number for the table's life; numbers are read without a lock (chunks are made once and
/// never dropped while the table lives). A table that has seen [`MAX_NODES`] names numbers no
/// more, and its writers say so.
pub(crate) struct Numbers {
    by_name: Mutex<HashMap<NodeId, u16>>,
    chunks: Box<[OnceLock<Box<[Numbered]>>]>,
}

impl Default for Numbers {
    fn default() -> Numbers {
        Numbers {
            by_name: Mutex::default(),
            chunks: (0..MAX_NODES / CHUNK).map(|_| OnceLock::new()).collect(),
        }
    }
}

impl Numbers {
    /// The name's number, given one if it has none; `None` once every number is taken.
    pub(crate) fn number(&self, id: &NodeId) -> Option<u16> {
        let mut by_name = self.by_name.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(&number) = by_name.get(id) {
            return Some(number);
        }
        let number = u16::try_from(by_name.len()).ok()?;
        let chunk = self.chunks[usize::from(number) / CHUNK]
            .get_or_init(|| (0..CHUNK).map(|_| Numbered::default()).collect());
        // Set before the number is handed out: a reader that sees the number finds the id.
        let _ = chunk[usize::from(number) % CHUNK].id.set(id.clone());
        by_name.insert(id.clone(), number);
        Some(number)
    }

    /// The node numbered `number`, with its index hint.
    pub(crate) fn get(&self, number: u16) -> Option<(&NodeId, &IndexHint)> {
        let numbered =
            &self.chunks[usize::from(number) / CHUNK].get()?[usize::from(number) % CHUNK];
        Some((numbered.id.get()?, &numbered.hint))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_never_free_markers() {
        for hash in [0, 1, 0xffff, 0x1_0000, u64::MAX] {
            let key = Fingerprint::of(hash).key(0);
            assert!(key != EMPTY && key != GONE, "{hash:#x}");
            assert_eq!(Fingerprint::of_key(key), Fingerprint::of(hash));
        }
        assert_eq!(number(Fingerprint::of(7 << 16).key(513)), 513);
    }

    #[test]
    fn data_words_keep_clock_and_count() {
        let word = data(1 << 36, 5);
        assert_eq!((last_seen(word), requests(word)), (1 << 36, 5));
        assert_eq!(requests(touched(data(9, COUNT_MAX), 10)), COUNT_MAX);
        assert_eq!(last_seen(touched(word, 77)), 77);
    }

    #[test]
    fn a_search_passes_gone_slots_and_stops_at_empty_ones() {
        let table = Table::with_slots(16);
        // Five rooms that all start on line 0 fill it and spill onto line 1.
        let rooms: Vec<Fingerprint> = (1..=5).map(|i| Fingerprint(i << 2)).collect();
        for room in &rooms {
            assert!(table.copy_in(room.key(1), 0));
        }
        let (first, _) = table.find(rooms[0]).unwrap();
        first.key.store(GONE, Ordering::Release);
        assert!(table.find(rooms[0]).is_none());
        assert!(table.find(rooms[4]).is_some(), "found past a gone slot");
        match table.place(Fingerprint(6 << 2)) {
            Place::Free(slot, seen) => {
                assert_eq!(seen, GONE);
                assert!(std::ptr::eq(slot, first), "reuses the first gone slot");
            }
            _ => panic!("expected a free slot"),
        }
        assert!(matches!(table.place(rooms[3]), Place::Taken(_, key) if key == rooms[3].key(1)));
        assert_eq!(table.taken().count(), 4);
    }

    #[test]
    fn a_full_table_says_so() {
        let table = Table::with_slots(4);
        for i in 0..4 {
            assert!(table.copy_in(Fingerprint(i + 1).key(0), 0));
        }
        assert!(matches!(table.place(Fingerprint(99)), Place::Full));
        assert!(table.find(Fingerprint(99)).is_none());
    }

    #[test]
    fn node_numbers_are_stable_and_bounded() {
        let numbers = Numbers::default();
        let (a, b) = (NodeId::new("a"), NodeId::new("b"));
        assert_eq!(numbers.number(&a), Some(0));
        assert_eq!(numbers.number(&b), Some(1));
        assert_eq!(numbers.number(&NodeId::new("a")), Some(0));
        assert_eq!(numbers.get(1).map(|(id, _)| id.as_str()), Some("b"));
        assert!(numbers.get(2).is_none());
        for i in 2..MAX_NODES {
            assert!(numbers.number(&NodeId::new(&format!("n{i}"))).is_some());
        }
        assert_eq!(numbers.number(&NodeId::new("one too many")), None);
        assert_eq!(numbers.number(&a), Some(0), "known names keep working");
    }
}
