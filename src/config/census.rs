//! `[census]`: how often the nodes' room census is polled.

use std::time::Duration;

use serde::Deserialize;

/// `[census]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Census {
    /// Time between two polls of a node's census.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for Census {
    fn default() -> Census {
        Census {
            interval: Duration::from_secs(10),
        }
    }
}

impl Census {
    /// Time allowed for one poll: 2 s, or the interval if shorter.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(2).min(self.interval)
    }

    /// How long a node's last good census still counts when polls fail: three intervals.
    pub fn kept_for(&self) -> Duration {
        self.interval * 3
    }
}
