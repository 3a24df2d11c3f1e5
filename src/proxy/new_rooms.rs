//! How fast one client may create rooms.
//!
//! Every new room is a pin the router keeps for `pin_idle_timeout` and a placement that adds
//! its estimated cost to a node until the next CPU reading. A client creating rooms as fast as
//! it can send requests would fill the pin table and make busy nodes of idle ones. So each
//! client ([`ClientKey`]: an address, an IPv6 /64) has a token bucket: `new_room_burst` rooms
//! at once, then `new_rooms_per_second`. A request that would create a room past it gets `429`
//! with `Retry-After`; requests for rooms that exist never take a token.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::peer::ClientKey;

/// Buckets kept before full ones are first forgotten (a full bucket is the same as none).
const FORGET_FULL_PAST: usize = 64 * 1024;

/// The new-room buckets of every client.
#[derive(Debug)]
pub struct NewRooms {
    buckets: Mutex<Buckets>,
}

/// The rate, which a reload may change, and each client's bucket.
#[derive(Debug)]
struct Buckets {
    rate: Rate,
    by_client: HashMap<ClientKey, Bucket>,
    /// How many buckets make the next sweep of full ones: twice what the last sweep left, so
    /// that clients enough to keep that many buckets short of full (many addresses creating
    /// rooms) cost each new room a share of a sweep, not a sweep.
    sweep_at: usize,
}

#[derive(Debug, Clone, Copy)]
struct Rate {
    per_second: f64,
    burst: f64,
}

impl Rate {
    fn of(per_second: f64, burst: u32) -> Rate {
        Rate {
            per_second,
            burst: f64::from(burst),
        }
    }

    fn refilled(self, bucket: Bucket, now: Instant) -> f64 {
        let earned = now.saturating_duration_since(bucket.at).as_secs_f64() * self.per_second;
        (bucket.tokens + earned).min(self.burst)
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl NewRooms {
    /// Buckets of `burst` tokens refilled at `per_second`.
    pub fn new(per_second: f64, burst: u32) -> NewRooms {
        NewRooms {
            buckets: Mutex::new(Buckets {
                rate: Rate::of(per_second, burst),
                by_client: HashMap::new(),
                sweep_at: FORGET_FULL_PAST,
            }),
        }
    }

    /// Refills at `per_second` up to `burst` from now on (a reload). A client keeps the tokens
    /// it has, down to the new burst.
    pub fn set_rate(&self, per_second: f64, burst: u32) {
        self.lock().rate = Rate::of(per_second, burst);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buckets> {
        self.buckets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a token for a new room of `client`; `Err` with the wait until the next one.
    pub fn take(&self, client: ClientKey) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.lock();
        let rate = buckets.rate;
        if buckets.by_client.len() >= buckets.sweep_at {
            (buckets.by_client).retain(|_, bucket| rate.refilled(*bucket, now) < rate.burst);
            buckets.sweep_at = (2 * buckets.by_client.len()).max(FORGET_FULL_PAST);
        }
        let tokens = (buckets.by_client.get(&client))
            .map_or(rate.burst, |bucket| rate.refilled(*bucket, now));
        if tokens < 1.0 {
            let wait = (1.0 - tokens) / rate.per_second;
            return Err(Duration::from_secs_f64(wait));
        }
        let bucket = Bucket {
            tokens: tokens - 1.0,
            at: now,
        };
        buckets.by_client.insert(client, bucket);
        Ok(())
    }

    /// Gives back the token of a request that created no room after all (another request
    /// created it first, or another replica had).
    pub fn give_back(&self, client: ClientKey) {
        let mut buckets = self.lock();
        let burst = buckets.rate.burst;
        if let Some(bucket) = buckets.by_client.get_mut(&client) {
            bucket.tokens = (bucket.tokens + 1.0).min(burst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_per_client() {
        let rooms = NewRooms::new(2.0, 3);
        let a = ClientKey::of("192.0.2.1".parse().unwrap());
        let b = ClientKey::of("192.0.2.2".parse().unwrap());
        for _ in 0..3 {
            rooms.take(a).unwrap();
        }
        let wait = rooms.take(a).unwrap_err();
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500));
        rooms.take(b).unwrap();
        rooms.give_back(a);
        rooms.take(a).unwrap();
        assert!(rooms.take(a).is_err());
        std::thread::sleep(Duration::from_millis(600));
        rooms.take(a).unwrap();
    }

    #[test]
    fn full_buckets_are_forgotten_and_short_ones_do_not_make_every_room_sweep() {
        let rooms = NewRooms::new(1.0, 1000);
        let client = |i: u32| ClientKey::of(std::net::Ipv4Addr::from(i).into());
        let count = u32::try_from(FORGET_FULL_PAST).unwrap();
        for i in 0..count {
            rooms.take(client(i)).unwrap();
        }
        // Every bucket is short of full: the sweep keeps them all and moves the next one out.
        rooms.take(client(count)).unwrap();
        let buckets = rooms.lock();
        assert_eq!(buckets.by_client.len(), FORGET_FULL_PAST + 1);
        assert_eq!(buckets.sweep_at, 2 * FORGET_FULL_PAST);
        drop(buckets);
        // Full again (a new burst of 1), they are forgotten at the next sweep.
        rooms.set_rate(1.0, 1);
        for i in count + 1..=2 * count {
            rooms.take(client(i)).unwrap();
        }
        let buckets = rooms.lock();
        assert!(buckets.by_client.len() <= FORGET_FULL_PAST);
        assert!(!buckets.by_client.contains_key(&client(0)));
    }

    #[test]
    fn a_new_rate_holds_from_the_next_room() {
        let rooms = NewRooms::new(100.0, 100);
        let a = ClientKey::of("192.0.2.1".parse().unwrap());
        rooms.take(a).unwrap();
        rooms.set_rate(0.5, 2);
        // The 99 tokens left are cut to the new burst.
        rooms.take(a).unwrap();
        rooms.take(a).unwrap();
        let wait = rooms.take(a).unwrap_err();
        assert!(wait > Duration::from_millis(1900), "{wait:?}");
    }
}
