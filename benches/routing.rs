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

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use jitsi_router::placement::{Router, Settings};
use jitsi_router::room::{classify, Fetch, RoomKey, RoomLimits};

mod common;

use common::{
    hammer, key, new_rooms_op, pinned_op, read_cpu, route, router, Readings, PLACED_PER_READING,
};

fn parse(c: &mut Criterion) {
    let limits = RoomLimits::default();
    let mut group = c.benchmark_group("classify");
    group.bench_function("page", |b| {
        b.iter(|| {
            classify(
                std::hint::black_box("/weeklystandup"),
                None,
                Fetch::Document,
                &limits,
            )
        })
    });
    group.bench_function("bosh_query", |b| {
        b.iter(|| {
            classify(
                std::hint::black_box("/http-bind"),
                Some("room=weeklystandup"),
                Fetch::Resource,
                &limits,
            )
        })
    });
    group.bench_function("unicode", |b| {
        b.iter(|| {
            classify(
                std::hint::black_box("/Caf%C3%A9-R%C3%A9union"),
                None,
                Fetch::Document,
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
                        route(&router, key);
                    }
                    (router, keys)
                })
            };
            let mut pinned = c.benchmark_group("pinned_room_2_threads");
            pinned.bench_function(BenchmarkId::new(format!("{nodes}_nodes"), pins), |b| {
                let (router, keys) = setup();
                let op = pinned_op(router, keys);
                b.iter_custom(|iters| hammer(iters, &op))
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
            route(&router, &key(&format!("room-{i}")));
        }
        new_rooms(b, &router, Readings::Tied)
    });
    tied.finish();
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

/// Times [`new_rooms_op`], starting each sample with a fresh reading.
fn new_rooms(b: &mut criterion::Bencher<'_>, router: &Router, readings: Readings) {
    let fresh: Vec<RoomKey<'static>> = (0..200_000).map(|i| key(&format!("fresh-{i}"))).collect();
    let op = new_rooms_op(router, &fresh, readings);
    b.iter_custom(|iters| {
        read_cpu(router.fleet(), readings);
        hammer(iters, &op)
    })
}
