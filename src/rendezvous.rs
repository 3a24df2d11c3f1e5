//! Rendezvous (highest-random-weight) hashing: how placement settles ties and places rooms
//! when it has no CPU data.
//!
//! Each (room, node) pair gets a pseudo-random weight; a room goes to the candidate with the highest
//! weight. Every replica computes the same weights (the hash is fixed, not seeded per process), and
//! removing a node only moves the rooms that node was winning. With node capacities
//! ([`score`]), a node of weight 2 wins twice as many rooms as one of weight 1.
//!
//! The hash is FNV-1a over the bytes followed by the splitmix64 finaliser for avalanche; the weight
//! of a pair mixes the two hashes again. Stable across builds and platforms by construction.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// splitmix64's finaliser: a bijective mix with good avalanche.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A stable 64-bit hash of a room key or node name.
pub fn seed(bytes: &[u8]) -> u64 {
    let fnv = bytes.iter().fold(FNV_OFFSET, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    });
    mix(fnv)
}

/// The weight of a room (by its [`seed`]) on a node (by its [`seed`]).
pub fn weight(room: u64, node: u64) -> u64 {
    mix(room ^ node.rotate_left(32))
}

/// A room's score on a node of capacity `capacity` (> 0): the highest score wins, and each node
/// wins rooms in proportion to its capacity (weighted rendezvous hashing, Schindelhauer and
/// Schomaker 2005: `-capacity / ln(u)` with `u` uniform in (0, 1) from [`weight`]). Nodes of
/// equal capacity rank as [`weight`] ranks them.
pub fn score(room: u64, node: u64, capacity: f64) -> f64 {
    let unit = ((weight(room, node) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -capacity / unit.ln()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn winner(room: &str, nodes: &[&str]) -> usize {
        let r = seed(room.as_bytes());
        (0..nodes.len())
            .max_by_key(|&i| weight(r, seed(nodes[i].as_bytes())))
            .unwrap()
    }

    #[test]
    fn stable_values() {
        // Replicas and future builds must agree: pin the function's output.
        assert_eq!(seed(b""), mix(FNV_OFFSET));
        assert_eq!(seed(b"myroom"), seed(b"myroom"));
        assert_ne!(seed(b"myroom"), seed(b"myroon"));
    }

    #[test]
    fn spreads_rooms_evenly() {
        let nodes = ["a", "b", "c", "d"];
        let mut counts = [0usize; 4];
        for i in 0..40_000 {
            counts[winner(&format!("room-{i}"), &nodes)] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn capacity_weights_the_share() {
        let (small, big) = (seed(b"small"), seed(b"big"));
        let big_wins = (0..30_000u64)
            .filter(|i| {
                let room = seed(&i.to_le_bytes());
                score(room, big, 3.0) > score(room, small, 1.0)
            })
            .count();
        assert!((21_500..23_500).contains(&big_wins), "{big_wins} of 30000");
    }

    proptest! {
        #[test]
        fn removing_a_node_moves_only_its_rooms(room in "[a-z0-9]{1,20}", gone in 0usize..5) {
            let all = ["n0", "n1", "n2", "n3", "n4"];
            let before = winner(&room, &all);
            let rest: Vec<&str> = all.iter().copied().filter(|n| *n != all[gone]).collect();
            let after = rest[winner(&room, &rest)];
            if before != gone {
                prop_assert_eq!(after, all[before]);
            }
        }
    }
}
