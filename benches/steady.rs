//! Steadier numbers than criterion's on a noisy machine: each case runs several rounds of a
//! fixed number of decisions on two threads at once and reports the best and the median round,
//! in nanoseconds per decision per thread. A shared VM's neighbours only ever add time, so the
//! best round is the one to compare changes by; the median shows how noisy the run was.
//! Run with `cargo bench --bench steady [-- <filter>]`; the filter picks the case of that name
//! (for example `pinned/1000_nodes/100000`), or else the cases whose name contains it
//! (`1000_nodes`). Each table's build also prints the resident memory it took per pin
//! (`bytes_per_pin/...`, keys included). The first case, `floor/dependent_miss_64MiB`, runs unless the filter names
//! another case: it is not a decision but one load that misses every cache, the least a pinned
//! decision with a large table can take, timed in the same run. `census/1000_rooms` times what
//! one node's census poll costs the router (runs with no filter or a filter it contains).

use std::time::Duration;

mod common;

use common::{hammer, key, new_rooms_op, pinned_op, route, router, Readings};
use jitsi_router::room::RoomKey;

const ROUNDS: usize = 7;

fn main() {
    let filter = std::env::args()
        .skip(1)
        .find(|arg| !arg.starts_with('-'))
        .unwrap_or_default();
    let cases: Vec<(usize, usize)> = [10, 100, 1_000]
        .into_iter()
        .flat_map(|nodes| [10_000, 100_000, 1_000_000].map(|pins| (nodes, pins)))
        .collect();
    let name = |kind: &str, (nodes, pins): (usize, usize)| format!("{kind}/{nodes}_nodes/{pins}");
    let exact = filter == FLOOR
        || (cases.iter()).any(|&c| name("pinned", c) == filter || name("new_room", c) == filter);
    let picked = |name: &str| {
        if exact {
            name == filter
        } else {
            name.contains(&filter)
        }
    };
    println!("{:<36} {:>10} {:>10}", "case", "best ns", "median ns");
    if !exact || filter == FLOOR {
        floor();
    }
    if !exact && CENSUS.contains(&filter) {
        census();
    }
    for &(nodes, pins) in &cases {
        let pinned = name("pinned", (nodes, pins));
        let placed = name("new_room", (nodes, pins));
        if !picked(&pinned) && !picked(&placed) {
            continue;
        }
        let router = router(nodes, Readings::Distinct);
        let keys: Vec<RoomKey<'static>> = (0..pins).map(|i| key(&format!("room-{i}"))).collect();
        let before = resident_bytes();
        for key in &keys {
            route(&router, key);
        }
        // What the pin table took, keys included (the keys above are the bench's own copies).
        let grown = resident_bytes().saturating_sub(before);
        println!(
            "{:<36} {:>10.0} {:>10}",
            format!("bytes_per_pin/{nodes}_nodes/{pins}"),
            grown as f64 / pins as f64,
            "(RSS)"
        );
        if picked(&pinned) {
            report(&pinned, 2_000_000, &pinned_op(&router, &keys));
        }
        if picked(&placed) {
            let fresh: Vec<RoomKey<'static>> =
                (0..200_000).map(|i| key(&format!("fresh-{i}"))).collect();
            report(
                &placed,
                200_000,
                &new_rooms_op(&router, &fresh, Readings::Distinct),
            );
        }
    }
}

/// The process's resident memory (Linux `/proc/self/statm`), 0 where it cannot be read.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = (statm.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// A census poll's work in the router for one node hosting 1,000 live rooms.
const CENSUS: &str = "census/1000_rooms";

/// Times what the router does with one node's census answer of 1,000 live rooms, all pinned to
/// it: reading the JSON (about 90 KB) and refreshing each room's pin. The HTTP exchange is the
/// node's and the network's; one poll per node per `[census] interval` (10 s).
fn census() {
    use jitsi_router::fleet::census;
    use jitsi_router::room::RoomLimits;
    let router = router(10, Readings::Distinct);
    let rooms: Vec<String> = (0..1_000)
        .map(|i| format!(r#"{{"room_name": "standup-{i}@muc.meet.jitsi", "participants": {}, "created_time": 1700000000, "leaked": false}}"#, i % 7))
        .collect();
    let body = format!(r#"{{"room_census": [{}]}}"#, rooms.join(", "));
    let node = router.fleet().snapshot().nodes()[0].id.as_str().to_owned();
    let limits = RoomLimits::default();
    let live = census::parse(body.as_bytes(), &limits).expect("a census");
    router.apply_census(&node, &live);
    let poll = |_: u64, _: u64| {
        let live = census::parse(body.as_bytes(), &limits).expect("a census");
        std::hint::black_box(router.apply_census(&node, &live));
    };
    report(CENSUS, 2_000, &poll);
}

/// The reference case: what one cache miss costs on this machine.
const FLOOR: &str = "floor/dependent_miss_64MiB";

/// Times loads that each miss every cache and each wait for the one before (a random cycle
/// through 64 MiB, one load per 64-byte line, on two threads at once, as the other cases run).
/// A pinned decision with a million pins reads one line no cache holds, so its time cannot go
/// below this; the case shows the floor in the same run as the decisions.
fn floor() {
    const LINE: usize = 16; // u32 words per cache line
    let lines = (64 << 20) / 64;
    // Sattolo's shuffle makes one cycle through every line; a fixed xorshift makes it repeatable.
    let mut next: Vec<u32> = (0..lines as u32).collect();
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    for i in (1..lines).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        next.swap(i, (x % i as u64) as usize);
    }
    let mut words = vec![0u32; lines * LINE];
    for (line, &to) in next.iter().enumerate() {
        words[line * LINE] = to;
    }
    let words = &words;
    let walk = move |t: u64, i: u64| {
        // Each thread's place in the cycle, kept in a thread-local between calls.
        thread_local!(static AT: std::cell::Cell<u32> = const { std::cell::Cell::new(u32::MAX) });
        AT.with(|at| {
            let from = if i == 0 { (t as u32) * 7_919 } else { at.get() };
            at.set(words[from as usize * LINE]);
        });
    };
    report(FLOOR, 2_000_000, &walk);
}

fn report(name: &str, iters: u64, op: &(dyn Fn(u64, u64) + Sync)) {
    hammer(iters / 4, op);
    let mut rounds: Vec<Duration> = (0..ROUNDS).map(|_| hammer(iters, op)).collect();
    rounds.sort();
    let per = |d: Duration| d.as_nanos() as f64 / iters as f64;
    println!(
        "{name:<36} {:>10.0} {:>10.0}",
        per(rounds[0]),
        per(rounds[ROUNDS / 2])
    );
}
