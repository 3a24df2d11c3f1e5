//! What the fleet learns from consecutive CPU readings: the busy CPU one room adds, and how many
//! participants join through this router per room it places. Both are learned when a reading
//! closes a window and are kept in the fleet's inputs between readings.

use std::collections::HashMap;

use super::Inputs;

/// Rooms that must come or go between two readings before they teach the per-room cost.
const ROOMS_TO_LEARN_COST: u32 = 20;

/// Learns the busy CPU one room adds to a node of weight 1 from two consecutive readings: over
/// the nodes read both times, the change in CPU (times each node's weight: a room costs a node
/// of weight 2 half as much of its CPU) divided by the change in their pinned rooms. Idle load
/// and other tenants cancel out, unlike a plain CPU-per-room ratio. Samples with too few rooms
/// changed are skipped; good ones are smoothed (half weight each) and bounded to 0.05 %..5 % per
/// room.
pub(super) fn room_cost(inputs: &Inputs, cpu_by_instance: &HashMap<String, f64>) -> Option<f64> {
    let (mut cpu_change, mut room_change) = (0.0, 0i64);
    for spec in &inputs.specs {
        let (Some(before), Some(now)) = (
            inputs.cpu_by_instance.get(&spec.instance),
            cpu_by_instance.get(&spec.instance),
        ) else {
            continue;
        };
        let Some(live) = inputs.lives.get(spec.name.as_str()) else {
            continue;
        };
        let rooms_then = inputs
            .rooms_at_reading
            .get(spec.name.as_str())
            .copied()
            .unwrap_or(0);
        cpu_change += (now - before) * spec.weight;
        room_change += i64::from(live.rooms()) - i64::from(rooms_then);
    }
    if room_change.unsigned_abs() < u64::from(ROOMS_TO_LEARN_COST) {
        return inputs.learned_room_cost;
    }
    let sample = cpu_change / room_change as f64;
    // Rooms came but CPU fell (or the reverse): other load moved; nothing to learn.
    if sample.is_nan() || sample <= 0.0 {
        return inputs.learned_room_cost;
    }
    let sample = sample.clamp(0.0005, 0.05);
    Some(
        inputs
            .learned_room_cost
            .map_or(sample, |old| (old + sample) / 2.0),
    )
}

/// Learns how many participants join through this router per room it places, from the window
/// that a reading closes: joins over rooms placed, fleet-wide. Windows with too few rooms placed
/// or no join seen (BOSH clients, redirect mode) teach nothing; good ones are smoothed (half
/// weight each).
pub(super) fn joins_per_room(inputs: &Inputs) -> Option<f64> {
    let (mut joined, mut placed) = (0u64, 0u64);
    for live in inputs.lives.values() {
        joined += u64::from(live.joined_since_reading());
        placed += u64::from(live.placed_since_reading());
    }
    if placed < u64::from(ROOMS_TO_LEARN_COST) || joined == 0 {
        return inputs.learned_joins_per_room;
    }
    let sample = joined as f64 / placed as f64;
    Some(
        inputs
            .learned_joins_per_room
            .map_or(sample, |old| (old + sample) / 2.0),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    use crate::config::NodeSpec;
    use crate::fleet::Fleet;

    fn fleet() -> Fleet {
        Fleet::new(
            vec![
                NodeSpec::new("a", "http://10.0.0.1:80").unwrap(),
                NodeSpec::new("b", "http://10.0.0.2:80").unwrap(),
            ],
            Duration::from_secs(90),
        )
    }

    #[test]
    fn room_cost_is_learned_from_the_change_between_readings() {
        let fleet = fleet();
        let reading = |a: f64, b: f64| {
            HashMap::from([("10.0.0.1:80".to_owned(), a), ("10.0.0.2:80".to_owned(), b)])
        };
        fleet.set_cpu(reading(0.30, 0.10), Instant::now());
        let state = fleet.snapshot();
        for _ in 0..30 {
            state.nodes()[0].live.room_placed();
        }
        for _ in 0..10 {
            state.nodes()[1].live.room_placed();
        }
        // 40 rooms added 0.12 busy CPU in all: 0.003 per room, whatever the idle load.
        fleet.set_cpu(reading(0.39, 0.13), Instant::now());
        let learned = fleet.snapshot().learned_room_cost().unwrap();
        assert!((learned - 0.003).abs() < 1e-9, "{learned}");
        // Too few rooms changed: the estimate stays.
        fleet.set_cpu(reading(0.50, 0.50), Instant::now());
        assert_eq!(fleet.snapshot().learned_room_cost(), Some(learned));
    }

    #[test]
    fn joins_per_room_are_learned_from_the_window_a_reading_closes() {
        let fleet = fleet();
        let reading = || HashMap::from([("10.0.0.1:80".to_owned(), 0.3)]);
        fleet.set_cpu(reading(), Instant::now());
        let state = fleet.snapshot();
        let (a, b) = (&state.nodes()[0].live, &state.nodes()[1].live);
        let window = |rooms: u32, joins: u32| {
            for _ in 0..rooms {
                a.room_placed();
            }
            for _ in 0..joins {
                b.participant_joined();
            }
            fleet.set_cpu(reading(), Instant::now());
            fleet.snapshot().learned_joins_per_room()
        };
        // No join seen (BOSH clients, redirect mode), or too few rooms: nothing learned.
        assert_eq!(window(40, 0), None);
        assert_eq!(window(10, 50), None);
        // 60 participants joined (on any node) while 20 rooms were placed: 3 per room.
        assert_eq!(window(20, 60), Some(3.0));
        // Smoothed: half weight each.
        assert_eq!(window(20, 100), Some(4.0));
        assert_eq!(a.joined_since_reading() + b.joined_since_reading(), 0);
    }
}
