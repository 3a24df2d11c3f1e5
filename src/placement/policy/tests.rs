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
    let spread = cpu.iter().copied().fold(0.0, f64::max) - cpu.iter().copied().fold(1.0, f64::min);
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
fn participants_joining_between_readings_count_as_soon_as_they_join() {
    let settings = Settings {
        room_cost: Some(0.01),
        ..Settings::default()
    };
    let fleet = fleet(2);
    read(&fleet, &[0.30, 0.30]);
    // A window of 20 rooms with 60 participants teaches 3 participants per room.
    let state = fleet.snapshot();
    for _ in 0..20 {
        state.nodes()[1].live.room_placed();
    }
    for _ in 0..60 {
        state.nodes()[1].live.participant_joined();
    }
    read(&fleet, &[0.30, 0.32]);
    assert_eq!(fleet.snapshot().learned_joins_per_room(), Some(3.0));
    // n0 reads less busy and took one room since, but 30 people joined it (a large room, or
    // people joining its older rooms): ten rooms' worth, 0.10 of CPU, before any reading
    // shows it.
    let state = fleet.snapshot();
    let n0 = &state.nodes()[0].live;
    n0.room_placed();
    for _ in 0..30 {
        n0.participant_joined();
    }
    let n0_estimate = estimate_of(&state, &settings, 0);
    assert!((n0_estimate - 0.40).abs() < 1e-9, "{n0_estimate}");
    assert_eq!(
        choose(&state, &settings, 9, Instant::now()).unwrap().index,
        1
    );
    // Fewer joins than rooms' worth: the rooms placed count.
    let state = fleet.snapshot();
    for _ in 0..5 {
        state.nodes()[1].live.room_placed();
    }
    let n1_estimate = estimate_of(&state, &settings, 1);
    assert!((n1_estimate - 0.37).abs() < 1e-9, "{n1_estimate}");
}

fn estimate_of(state: &FleetState, settings: &Settings, index: usize) -> f64 {
    estimate(state, settings, index, Instant::now()).unwrap()
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

#[test]
fn a_smaller_node_keeps_headroom_for_a_large_room() {
    let fleet = fleet_of(&[1.0, 4.0]);
    let settings = Settings {
        room_cost: Some(0.01),
        ..Settings::default()
    };
    let chosen = |cpu: &[f64]| {
        read(&fleet, cpu);
        choose(&fleet.snapshot(), &settings, 7, Instant::now())
            .unwrap()
            .index
    };
    // Ranked as taking a room of 4 × 0.01: 0.28 + 0.04 against 0.30 + 0.01.
    assert_eq!(
        chosen(&[0.28, 0.30]),
        1,
        "the small node is not cool enough"
    );
    assert_eq!(chosen(&[0.26, 0.30]), 0, "the small node is cooler by more");
    let alike = fleet_of(&[2.0, 2.0]);
    read(&alike, &[0.299, 0.30]);
    let chosen = choose(&alike.snapshot(), &settings, 7, Instant::now()).unwrap();
    assert_eq!(chosen.index, 0, "nodes of one size rank by their estimate");
}
