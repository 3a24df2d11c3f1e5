//! Routing-decision cost: room parsing, a pinned room's lookup, and a new room's placement, at
//! several fleet sizes. Run with `cargo bench --bench routing`.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use jitsi_router::config::NodeSpec;
use jitsi_router::fleet::Fleet;
use jitsi_router::placement::pins::MemoryPins;
use jitsi_router::placement::{policy, rendezvous, Router};
use jitsi_router::room::{classify, RoomKey, RoomLimits, Target};

fn router(nodes: usize) -> Router {
    let specs = (0..nodes)
        .map(|i| {
            NodeSpec::new(
                &format!("jitsi-{i}"),
                &format!("http://10.{}.{}.{}:80", i / 65536, (i / 256) % 256, i % 256),
            )
            .unwrap()
        })
        .collect();
    let fleet = Arc::new(Fleet::new(specs, Duration::from_secs(90)));
    Router::new(fleet, Arc::new(MemoryPins::new(Duration::from_secs(600))))
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

fn pinned(c: &mut Criterion) {
    let mut group = c.benchmark_group("pinned_room");
    for (nodes, pins) in [(10, 10_000), (100, 100_000), (1_000, 100_000)] {
        let router = router(nodes);
        let keys: Vec<RoomKey<'static>> = (0..pins)
            .map(|i| RoomKey::parse(&format!("room-{i}"), &RoomLimits::default()).unwrap())
            .collect();
        for key in &keys {
            router.route_room(key);
        }
        let mut i = 0;
        group.bench_with_input(
            BenchmarkId::new(format!("{nodes}_nodes"), pins),
            &keys,
            |b, keys| {
                b.iter(|| {
                    i = (i + 7919) % keys.len();
                    router.route_room(&keys[i])
                })
            },
        );
    }
    group.finish();
}

fn placement(c: &mut Criterion) {
    let mut group = c.benchmark_group("new_room_placement");
    for nodes in [10, 100, 1_000] {
        let router = router(nodes);
        let state = router.fleet().snapshot();
        let mut n = 0u64;
        group.bench_function(BenchmarkId::from_parameter(nodes), |b| {
            b.iter(|| {
                n += 1;
                policy::choose(
                    &state,
                    rendezvous::seed(&n.to_le_bytes()),
                    std::time::Instant::now(),
                )
            })
        });
    }
    group.finish();
}

fn end_to_end_new_room(c: &mut Criterion) {
    let limits = RoomLimits::default();
    let router = router(100);
    let mut n = 0u64;
    c.bench_function("route_new_room_100_nodes", |b| {
        b.iter(|| {
            n += 1;
            let path = format!("/fresh-{n}");
            if let Ok(Target::Room { key, .. }) = classify(&path, None, &limits) {
                router.route_room(&key);
            }
        })
    });
}

criterion_group!(benches, parse, pinned, placement, end_to_end_new_room);
criterion_main!(benches);
