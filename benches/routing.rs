//! Routing-decision cost: room parsing, a pinned room's decision and a new room's placement at
//! 10, 100 and 1,000 nodes with 10 k, 100 k and 1 M pins, measured with two threads working the
//! same table at once (each reported time is one thread's time per decision; a new room's time
//! includes unpinning it again so that every operation is a real placement).
//!
//! Readings differ from node to node, as real ones do (a busy fraction averaged over a window
//! is a float that two nodes practically never share). One more case reads twenty nodes at
//! each of fifty exact values: then rooms keep landing in wide ties, which the placement rule
//! settles by rendezvous weight over every tied node, and the cost grows with the tie.
//! Run with `cargo bench --bench routing`.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use jitsi_router::config::NodeSpec;
use jitsi_router::fleet::Fleet;
use jitsi_router::placement::pins::MemoryPins;
use jitsi_router::placement::{Router, Settings};
use jitsi_router::room::{classify, RoomKey, RoomLimits};

const THREADS: u64 = 2;

/// How the CPU readings of a bench fleet are spread.
#[derive(Clone, Copy)]
enum Readings {
    /// Every node a different value in 0.20..0.70.
    Distinct,
    /// Fifty values 0.20, 0.21, … 0.69, twenty nodes each at a thousand nodes.
    Tied,
}

fn router(nodes: usize, readings: Readings) -> Router {
    let specs = (0..nodes)
        .map(|i| {
            let upstream = format!("http://10.{}.{}.{}:80", i / 65536, (i / 256) % 256, i % 256);
            NodeSpec::new(&format!("jitsi-{i}"), &upstream).unwrap()
        })
        .collect();
    let fleet = Arc::new(Fleet::new(specs, Duration::from_secs(90)));
    read_cpu(&fleet, readings);
    let pins = Arc::new(MemoryPins::new(Duration::from_secs(3600)));
    Router::new(fleet, pins, Settings::default())
}

/// A fresh CPU reading, busy fractions 0.20 to 0.70. Taken again before each sample, as the
/// router takes one every interval: a reading older than `max_staleness` would turn placement
/// into its no-data fallback.
fn read_cpu(fleet: &Fleet, readings: Readings) {
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

fn key(text: &str) -> RoomKey<'static> {
    RoomKey::parse(text, &RoomLimits::default()).unwrap()
}

/// Runs `op(thread, i)` `iters` times on each of two threads at once; returns one thread's time.
fn hammer(iters: u64, op: &(dyn Fn(u64, u64) + Sync)) -> Duration {
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

fn parse(c: &mut Criterion) {
    let limits = RoomLimits::default();
    let mut group = c.benchmark_group("classify");
    group.bench_function("page", |b| {
        b.iter(|| classify(std::hint::black_box("/weeklystandup"), None, &limits))
    });
    group.bench_function("bosh_query", |b| {
        b.iter(|| {
            classify(
                std::hint::black_box("/http-bind"),
                Some("room=weeklystandup"),
                &limits,
            )
        })
    });
    group.bench_function("unicode", |b| {
        b.iter(|| {
            classify(
                std::hint::black_box("/Caf%C3%A9-R%C3%A9union"),
                None,
                &limits,
            )
        })
    });
    group.finish();
}

fn decisions(c: &mut Criterion) {
    for nodes in [10, 100, 1_000] {
        for pins in [10_000usize, 100_000, 1_000_000] {
            // Built on first use, so a filtered run sets up only the sizes it measures.
            let table = std::cell::OnceCell::new();
            let table = &table;
            let setup = move || {
                table.get_or_init(|| {
                    let router = router(nodes, Readings::Distinct);
                    let keys: Vec<RoomKey<'static>> =
                        (0..pins).map(|i| key(&format!("room-{i}"))).collect();
                    for key in &keys {
                        router.route_room(key);
                    }
                    (router, keys)
                })
            };
            let mut pinned = c.benchmark_group("pinned_room_2_threads");
            pinned.bench_function(BenchmarkId::new(format!("{nodes}_nodes"), pins), |b| {
                let (router, keys) = setup();
                b.iter_custom(|iters| {
                    hammer(iters, &|t, i| {
                        // The threads walk the keys in order from different starts. The table
                        // slots they hit are still random (they follow the hash), but the key text
                        // itself is near in memory, as a request's own room name is: a random
                        // walk over a million boxed keys would time the bench's cache misses.
                        let k = &keys[((i + t * pins as u64 / 2) % pins as u64) as usize];
                        std::hint::black_box(router.route_room(k));
                    })
                })
            });
            pinned.finish();

            let mut placed = c.benchmark_group("new_room_2_threads");
            placed.bench_function(BenchmarkId::new(format!("{nodes}_nodes"), pins), |b| {
                new_rooms(b, &setup().0, Readings::Distinct)
            });
            placed.finish();
        }
    }
    let mut tied = c.benchmark_group("new_room_tied_readings_2_threads");
    tied.bench_function(BenchmarkId::new("1000_nodes", 10_000), |b| {
        let router = router(1_000, Readings::Tied);
        for i in 0..10_000 {
            router.route_room(&key(&format!("room-{i}")));
        }
        new_rooms(b, &router, Readings::Tied)
    });
    tied.finish();
}

/// Placements between two CPU readings. The router reads every interval (15 to 30 s), and every
/// room placed since the last reading raises its node's estimate by the room cost: a bench
/// that never read again would, after a few hundred thousand rooms, find every node over
/// `max_cpu`, a state a fleet is not left in for long. 8,192 rooms in one interval is more
/// than the busiest public Jitsi deployments create; the readings are part of the timed work.
const PLACED_PER_READING: u64 = 8_192;

/// Times placing rooms no one has pinned, each unpinned again so that its key is fresh later:
/// the time includes one unpin (a shard write) and a share of the readings.
fn new_rooms(b: &mut criterion::Bencher<'_>, router: &Router, readings: Readings) {
    let fresh: Vec<RoomKey<'static>> = (0..200_000).map(|i| key(&format!("fresh-{i}"))).collect();
    let counter = std::sync::atomic::AtomicUsize::new(0);
    b.iter_custom(|iters| {
        read_cpu(router.fleet(), readings);
        hammer(iters, &|t, i| {
            if t == 0 && i % (PLACED_PER_READING / THREADS) == 0 {
                read_cpu(router.fleet(), readings);
            }
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let room = &fresh[n % fresh.len()];
            std::hint::black_box(router.route_room(room));
            router.unpin(room.as_str());
        })
    })
}

/// `choose` alone, without the pin table: each chosen node counts the room in and out again,
/// so that rooms placed since the reading move the estimates as they do in service (and a
/// reading is taken as often as in the new-room bench).
fn choose_only(c: &mut Criterion) {
    let mut group = c.benchmark_group("choose_only_1_thread");
    for nodes in [10, 100, 1_000] {
        let router = router(nodes, Readings::Distinct);
        let mut state = router.fleet().snapshot();
        let settings = Settings::default();
        let mut n = 0u64;
        group.bench_function(BenchmarkId::from_parameter(nodes), |b| {
            b.iter(|| {
                n += 1;
                if n % PLACED_PER_READING == 0 {
                    read_cpu(router.fleet(), Readings::Distinct);
                    state = router.fleet().snapshot();
                }
                let chosen =
                    jitsi_router::placement::policy::choose(&state, &settings, n, Instant::now());
                let live = &state.nodes()[chosen.map_or(0, |c| c.index)].live;
                live.room_placed();
                live.room_left();
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = parse, choose_only, decisions
}
criterion_main!(benches);
