//! The TLS sessions kept for resumption (`limits.tls_sessions`): two generations of a map.
//!
//! DESIGN note. rustls's own `ServerSessionMemoryCache` keeps its keys in insertion order in a
//! queue beside the map, and taking a session (every TLS 1.3 resumption takes its ticket) finds
//! the key in that queue by a linear scan under the cache's one lock: with 20,000 sessions,
//! about 17 % of the router's CPU per connection under `NEW_CONNECTIONS=1 benches/load.sh`,
//! and every other handshake waiting on the lock meanwhile (rustls issue 1503). Without the
//! scan a connection there costs 225–237 µs of CPU instead of 296–313 (`benches/HISTORY.md`,
//! "The TLS session store without a search"). Here new sessions go into the current
//! generation; when it holds half the cap it becomes the previous one and the previous one is
//! dropped, after the lock is released. Every operation is a map lookup or two, the cap holds,
//! and the newest half of the cap is always kept; rustls's queue kept exactly the newest
//! `cap`, a difference no client can tell from a full handshake now and then.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

/// Sessions by their id or ticket, at most `cap` of them.
pub struct Sessions {
    /// How many sessions a generation takes before it is retired: half the cap, rounded up.
    generation: usize,
    maps: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    current: HashMap<Vec<u8>, Vec<u8>>,
    previous: HashMap<Vec<u8>, Vec<u8>>,
}

impl Sessions {
    /// A store of at most `cap` sessions (at least one).
    pub fn new(cap: usize) -> Sessions {
        Sessions {
            generation: cap.div_ceil(2).max(1),
            maps: Mutex::default(),
        }
    }

    fn maps(&self) -> std::sync::MutexGuard<'_, Generations> {
        // A poisoned lock only means a handshake panicked mid-call; the maps are still whole.
        self.maps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sessions held now.
    fn len(&self) -> usize {
        let maps = self.maps();
        maps.current.len() + maps.previous.len()
    }
}

impl rustls::server::StoresServerSessions for Sessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let retired = {
            let mut maps = self.maps();
            maps.previous.remove(&key);
            maps.current.insert(key, value);
            if maps.current.len() < self.generation {
                return true;
            }
            let full = std::mem::take(&mut maps.current);
            std::mem::replace(&mut maps.previous, full)
        };
        // Freed here, not under the lock: half the cap's sessions at once.
        drop(retired);
        true
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let maps = self.maps();
        (maps.current.get(key))
            .or_else(|| maps.previous.get(key))
            .cloned()
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        let mut maps = self.maps();
        (maps.current.remove(key)).or_else(|| maps.previous.remove(key))
    }

    fn can_cache(&self) -> bool {
        true
    }
}

impl fmt::Debug for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sessions")
            .field("generation", &self.generation)
            .field("held", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use rustls::server::StoresServerSessions;

    use super::*;

    fn id(n: u32) -> Vec<u8> {
        n.to_be_bytes().to_vec()
    }

    #[test]
    fn a_session_is_got_until_it_is_taken() {
        let sessions = Sessions::new(10);
        assert!(sessions.put(id(1), b"one".to_vec()));
        assert_eq!(sessions.get(&id(1)), Some(b"one".to_vec()));
        assert_eq!(sessions.get(&id(1)), Some(b"one".to_vec()));
        assert_eq!(sessions.take(&id(1)), Some(b"one".to_vec()));
        assert_eq!(sessions.take(&id(1)), None);
        assert_eq!(sessions.get(&id(1)), None);
        assert_eq!(sessions.len(), 0);
    }

    #[test]
    fn holds_at_most_its_cap_and_always_the_newest_half() {
        for cap in [1, 2, 3, 10, 1_000] {
            let sessions = Sessions::new(cap);
            for n in 0..5 * cap as u32 {
                sessions.put(id(n), id(n));
                assert!(sessions.len() <= cap, "cap {cap}: {} held", sessions.len());
                let newest = (cap as u32).div_ceil(2);
                for kept in n.saturating_sub(newest - 1)..=n {
                    assert_eq!(sessions.get(&id(kept)), Some(id(kept)), "cap {cap}, {kept}");
                }
            }
            assert_eq!(sessions.get(&id(0)), None, "cap {cap}: the oldest went");
        }
    }

    #[test]
    fn a_session_put_again_is_replaced_and_counted_once() {
        let sessions = Sessions::new(4);
        sessions.put(id(1), b"old".to_vec());
        sessions.put(id(2), b"two".to_vec());
        // The second put filled a generation, now the previous one; a put brings 1 forward.
        sessions.put(id(1), b"new".to_vec());
        assert_eq!(sessions.len(), 2);
        assert_eq!(sessions.take(&id(1)), Some(b"new".to_vec()));
        assert_eq!(sessions.get(&id(1)), None);
    }

    #[test]
    fn taken_sessions_leave_room_for_new_ones() {
        let sessions = Sessions::new(100);
        for n in 0..1_000 {
            sessions.put(id(n), id(n));
            // A TLS 1.3 client resuming takes the ticket it was given.
            assert_eq!(sessions.take(&id(n)), Some(id(n)));
        }
        assert_eq!(sessions.len(), 0);
    }
}
