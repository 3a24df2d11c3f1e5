//! What the routing benches share: a bench fleet with fresh CPU readings, room keys, and
//! two threads working one table at once.
#![allow(dead_code)] // Each bench uses its own part.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use jitsi_router::config::NodeSpec;
use jitsi_router::fleet::Fleet;
use jitsi_router::placement::pins::Pins;
use jitsi_router::placement::{Routed, Router, Settings};
use jitsi_router::room::{RoomKey, RoomLimits};

/// The allocator the `jitsi-router` binary runs with, so that what the benches allocate costs
/// what it costs in service.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Threads working the table at once.
pub const THREADS: u64 = 2;

/// How the CPU readings of a bench fleet are spread.
#[derive(Clone, Copy)]
pub enum Readings {
    /// Every node a different value in 0.20..0.70.
    Distinct,
    /// Fifty values 0.20, 0.21, … 0.69, twenty nodes each at a thousand nodes.
    Tied,
}

/// A router over `nodes` bench nodes with a fresh reading and an empty pin table.
pub fn router(nodes: usize, readings: Readings) -> Router {
    let specs = (0..nodes)
        .map(|i| {
            let upstream = format!("http://10.{}.{}.{}:80", i / 65536, (i / 256) % 256, i % 256);
            NodeSpec::new(&format!("jitsi-{i}"), &upstream).unwrap()
        })
        .collect();
    let fleet = Arc::new(Fleet::new(specs, Duration::from_secs(90)));
    read_cpu(&fleet, readings);
    let pins = Arc::new(Pins::new(Duration::from_secs(3600), usize::MAX));
    Router::new(fleet, pins, Settings::default())
}

/// A fresh CPU reading, busy fractions 0.20 to 0.70. Taken again before each sample, as the
/// router takes one every interval: a reading older than `max_staleness` would turn placement
/// into its no-data fallback.
pub fn read_cpu(fleet: &Fleet, readings: Readings) {
    let nodes = fleet.snapshot().nodes().len();
    let cpu = (0..nodes)
        .map(|i| {
            let busy = match readings {
                // The golden ratio's multiples mod 1 spread evenly and never repeat.
                Readings::Distinct => 0.2 + 0.5 * (i as f64 * 0.618_033_988_749_895).fract(),
                Readings::Tied => 0.2 + (i % 50) as f64 / 100.0,
            };
            (
                format!("10.{}.{}.{}:80", i / 65536, (i / 256) % 256, i % 256),
                busy,
            )
        })
        .collect();
    fleet.set_cpu(cpu, Instant::now());
}

/// A room key as routing sees it.
pub fn key(text: &str) -> RoomKey<'static> {
    RoomKey::parse(text, &RoomLimits::default()).unwrap()
}

/// Runs `op(thread, i)` `iters` times on each of two threads at once; returns one thread's time.
pub fn hammer(iters: u64, op: &(dyn Fn(u64, u64) + Sync)) -> Duration {
    let barrier = Barrier::new(THREADS as usize);
    let times: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    for i in 0..iters {
                        op(t, i);
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    times.into_iter().max().unwrap_or_default()
}

/// A room's decision as the proxy asks for it ([`Router::route`], no shared store: the future
/// is ready at once, and nothing refuses the room).
pub fn route(router: &Router, room: &RoomKey<'_>) -> Option<Routed> {
    let routed = router.route(room, || Ok::<(), ()>(())).now_or_never();
    routed
        .expect("no shared store: ready at once")
        .expect("admitted")
}

/// Placements between two CPU readings. The router reads every interval (15 to 30 s), and every
/// room placed since the last reading raises its node's estimate by the room cost: a bench
/// that never read again would, after a few hundred thousand rooms, find every node over
/// `max_cpu`, a state a fleet is not left in for long. 8,192 rooms in one interval is more
/// than the busiest public Jitsi deployments create; the readings are part of the timed work.
pub const PLACED_PER_READING: u64 = 8_192;

/// Placing rooms no one has pinned, each unpinned again so that its key is fresh later: the
/// time includes one unpin (a shard write) and a share of the readings. Each thread takes its
/// own half of `fresh`, so the two never race for one room (a race is a pinned decision).
pub fn new_rooms_op<'a>(
    router: &'a Router,
    fresh: &'a [RoomKey<'static>],
    readings: Readings,
) -> impl Fn(u64, u64) + Sync + 'a {
    let half = (fresh.len() / THREADS as usize) as u64;
    move |t, i| {
        if t == 0 && i % (PLACED_PER_READING / THREADS) == 0 {
            read_cpu(router.fleet(), readings);
        }
        let room = &fresh[(t * half + i % half) as usize];
        std::hint::black_box(route(router, room));
        router.unpin(room.as_str());
    }
}

/// A pinned room's decision. The threads walk the keys in order from different starts. The
/// table slots they hit are still random (they follow the hash), but the key text itself is
/// near in memory, as a request's own room name is: a random walk over a million boxed keys
/// would time the bench's cache misses.
pub fn pinned_op<'a>(
    router: &'a Router,
    keys: &'a [RoomKey<'static>],
) -> impl Fn(u64, u64) + Sync + 'a {
    let pins = keys.len() as u64;
    move |t, i| {
        let k = &keys[((i + t * pins / 2) % pins) as usize];
        std::hint::black_box(route(router, k));
    }
}
