//! Background rounds by settings a reload may replace: the health checks and the census polls
//! run a round every interval of their section, and start one at once by a new section.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};

/// Publishes `value` when it differs from what `settings` holds, so that an unchanged section
/// of a reloaded config wakes no one.
pub fn set_if_changed<T: PartialEq>(settings: &watch::Sender<Arc<T>>, value: T) {
    settings.send_if_modified(|current| {
        let changed = **current != value;
        if changed {
            *current = Arc::new(value);
        }
        changed
    });
}

/// A timer that fires now and then every `interval`, not catching up on missed rounds.
pub fn every(interval: Duration) -> Interval {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick
}

/// The rounds of a loop: each [`next`](Rounds::next) waits for the next tick of the settings'
/// interval, or for new settings, and hands out the settings the round runs by.
pub struct Rounds<T> {
    changes: watch::Receiver<Arc<T>>,
    interval: fn(&T) -> Duration,
    tick: Interval,
}

impl<T> Rounds<T> {
    /// Rounds by the settings `changes` tells of, every `interval` of them; the first is due
    /// at once.
    pub fn new(mut changes: watch::Receiver<Arc<T>>, interval: fn(&T) -> Duration) -> Rounds<T> {
        let tick = every(interval(&changes.borrow_and_update()));
        Rounds {
            changes,
            interval,
            tick,
        }
    }

    /// Waits for the next round: an interval after the last, or at once when the settings
    /// changed (the interval then starts again from the new settings).
    pub async fn next(&mut self) -> Arc<T> {
        tokio::select! {
            _ = self.tick.tick() => {}
            Ok(()) = self.changes.changed() => {
                self.tick = every((self.interval)(&self.changes.borrow_and_update()));
                self.tick.tick().await;
            }
        }
        self.changes.borrow().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_round_every_interval_and_one_at_once_for_new_settings() {
        let settings = watch::Sender::new(Arc::new(Duration::from_secs(60)));
        let mut rounds = Rounds::new(settings.subscribe(), |every| *every);
        let start = tokio::time::Instant::now();
        rounds.next().await;
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "the first round is due at once"
        );
        rounds.next().await;
        assert_eq!(start.elapsed(), Duration::from_secs(60));

        set_if_changed(&settings, Duration::from_secs(60));
        tokio::time::sleep(Duration::from_secs(10)).await;
        rounds.next().await;
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(120),
            "the same settings wake no one"
        );

        tokio::time::sleep(Duration::from_secs(10)).await;
        set_if_changed(&settings, Duration::from_secs(5));
        assert_eq!(*rounds.next().await, Duration::from_secs(5));
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(130),
            "new settings: a round at once"
        );
        rounds.next().await;
        assert_eq!(start.elapsed(), Duration::from_secs(135));
    }
}
