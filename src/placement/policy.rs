//! Placement of a new room: which node takes it.
//!
//! The rule (issue 2's baseline, DESIGN §3): the node with the lowest busy CPU in the current
//! snapshot wins; nodes absent from the snapshot rank after every node with data; equal CPU, and a
//! fleet with no (fresh) data at all, fall back to the highest rendezvous weight of the room, so
//! replicas reading the same snapshot pick the same node and rooms spread when CPU is unknown.

use std::time::Instant;

use crate::fleet::FleetState;
use crate::placement::rendezvous;

/// The index of the node that should take a new room with this hash, or `None` for an empty fleet.
pub fn choose(state: &FleetState, room_hash: u64, now: Instant) -> Option<usize> {
    let cpu = state.cpu(now);
    state
        .nodes()
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let load = cpu.get(i).copied().flatten();
            (i, load, rendezvous::weight(room_hash, node.seed))
        })
        .min_by(|a, b| {
            // With data before without; lower CPU first; then higher weight first.
            let by_load = match (a.1, b.1) {
                (Some(x), Some(y)) => x.total_cmp(&y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            };
            by_load.then(b.2.cmp(&a.2))
        })
        .map(|(i, _, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeSpec;
    use crate::fleet::Fleet;
    use std::collections::HashMap;
    use std::time::Duration;

    fn fleet(n: usize) -> Fleet {
        let specs = (0..n)
            .map(|i| NodeSpec::new(&format!("n{i}"), &format!("http://10.0.0.{i}:80")).unwrap())
            .collect();
        Fleet::new(specs, Duration::from_secs(90))
    }

    #[test]
    fn lowest_cpu_wins() {
        let fleet = fleet(3);
        let now = Instant::now();
        let cpu = HashMap::from([
            ("10.0.0.0:80".to_owned(), 0.7),
            ("10.0.0.1:80".to_owned(), 0.2),
            ("10.0.0.2:80".to_owned(), 0.5),
        ]);
        fleet.set_cpu(cpu, now);
        for room in 0..50u64 {
            assert_eq!(
                choose(&fleet.load(), rendezvous::seed(&room.to_le_bytes()), now),
                Some(1)
            );
        }
    }

    #[test]
    fn nodes_without_data_rank_last() {
        let fleet = fleet(3);
        let now = Instant::now();
        fleet.set_cpu(HashMap::from([("10.0.0.2:80".to_owned(), 0.95)]), now);
        for room in 0..50u64 {
            assert_eq!(
                choose(&fleet.load(), rendezvous::seed(&room.to_le_bytes()), now),
                Some(2)
            );
        }
    }

    #[test]
    fn no_data_spreads_by_hash() {
        let fleet = fleet(3);
        let now = Instant::now();
        let mut seen = [0; 3];
        for room in 0..300u64 {
            seen[choose(&fleet.load(), rendezvous::seed(&room.to_le_bytes()), now).unwrap()] += 1;
        }
        assert!(seen.iter().all(|&c| c > 60), "{seen:?}");
    }

    #[test]
    fn empty_fleet_has_no_choice() {
        assert_eq!(choose(&fleet(0).load(), 1, Instant::now()), None);
    }
}
