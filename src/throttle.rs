//! A warning logged at most once an interval, however often its cause repeats, with a count of
//! the events it stands for: what keeps a flood (connections over a cap, a store that does not
//! answer) from flooding the log too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often most warnings may repeat.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// Counts events and says when one of them is due a warning. Lock-free: any thread may ask.
pub struct Throttle {
    every: Duration,
    epoch: Instant,
    count: AtomicU64,
    /// `count` at the last warning.
    warned_at_count: AtomicU64,
    /// Milliseconds since `epoch` of the last warning, plus one; 0 before the first.
    last_ms: AtomicU64,
}

impl Throttle {
    /// A warning at most once every `every`.
    pub fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            epoch: Instant::now(),
            count: AtomicU64::new(0),
            warned_at_count: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
        }
    }

    /// Counts one more event. When it is due a warning (the first one, or the first since the
    /// interval passed), the events since the last warning, this one included. Of threads asking
    /// at once, one is told.
    pub fn due(&self) -> Option<u64> {
        let count = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let now = u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let last = self.last_ms.load(Ordering::Relaxed);
        let every = u64::try_from(self.every.as_millis()).unwrap_or(u64::MAX);
        let due = (last == 0 || now.saturating_sub(last) >= every)
            && (self.last_ms)
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        due.then(|| count.saturating_sub(self.warned_at_count.swap(count, Ordering::Relaxed)))
    }

    /// Events counted so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl Default for Throttle {
    /// A warning at most every [`WARN_EVERY`].
    fn default() -> Throttle {
        Throttle::new(WARN_EVERY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_event_is_due_then_none_until_the_interval_passes() {
        let throttle = Throttle::new(Duration::from_millis(50));
        assert_eq!(throttle.due(), Some(1));
        assert_eq!(throttle.due(), None);
        assert_eq!(throttle.due(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(throttle.due(), Some(3), "the events since the last warning");
        assert_eq!(throttle.due(), None);
        assert_eq!(throttle.count(), 5);
    }

    #[test]
    fn of_threads_asking_at_once_one_is_told() {
        let throttle = Throttle::default();
        let told: usize = std::thread::scope(|s| {
            let asking: Vec<_> = (0..8)
                .map(|_| s.spawn(|| (0..1000).filter(|_| throttle.due().is_some()).count()))
                .collect();
            asking.into_iter().map(|t| t.join().unwrap()).sum()
        });
        assert_eq!(told, 1);
        assert_eq!(throttle.count(), 8000);
    }
}
