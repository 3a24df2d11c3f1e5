//! Pins shared by several router replicas through Redis (`[pins.redis]`).
//!
//! DESIGN note. Each replica keeps its own pin table ([`Pins`](super::pins::Pins))
//! and routes a room it holds a live pin for without asking anyone: the request path stays one
//! memory lookup. Redis is asked only when this replica has no pin for the room, or a pin to a
//! node that may no longer keep it. The question is one Lua script, run atomically by Redis:
//! "the room's node, or else this one" (insert-if-absent, with the pin's idle timeout as the
//! key's expiry). The first replica to ask places the room; every other replica adopts its
//! answer, so a room's participants meet on one node whichever replica their requests reach.
//! A replica that finds the room on a node it cannot use (down, or not in its fleet) moves it
//! with a compare-and-set on the node it found, so two replicas moving one room agree too.
//!
//! Every `sync_interval` each replica sends the store its live pins in batches; the store
//! refreshes their expiry (a room busy on one replica stays pinned for all) and answers with
//! those it holds elsewhere. So a room an operator moved or unpinned on one replica (an unpin
//! leaves a short-lived tombstone, `-`) is moved or unpinned on the others within one interval.
//!
//! When Redis does not answer within `timeout` (or is not reachable), the replica places the
//! room on its own, as a router without a shared store does, logs a warning (at most every
//! ten seconds) and counts the failure: requests never wait on a dead store, and for a second
//! after a failure they do not ask it at all. Rooms first seen
//! during such an outage may land on different nodes through different replicas; the next sync
//! after Redis is back moves them together (the first pin written wins).
//!
//! With a `rediss://` URL the connection is TLS (rustls): the server's certificate is checked
//! against `ca` (or the system's roots) and its name against the URL's host, and `client_cert`
//! is presented when the server asks for one. There is no switch to skip the checks: pins
//! decide where people meet, so a store that cannot prove who it is is not asked.
//!
//! With `sentinels`, Redis Sentinel says where the primary is. The background task asks the
//! sentinels again before every sync, and within a second of a failed question (which drops
//! the connection): after a failover the replicas follow the new primary, which a Redis
//! replica kept as the old one's copy. Without sentinels the connection to `url` reconnects by
//! itself.
//!
//! With `cluster`, `url` names one node of a Redis Cluster, and the connection learns the
//! others and follows failovers and slot moves itself. Every key then carries the prefix as its
//! hash tag (`{prefix}room`): all pins share one slot, so a sync batch's keys may go to one
//! script, as with one server. The pins of a fleet fit one shard; the cluster gives failover.
//!
//! A reload that finds the TLS files (`ca`, `client_cert`, `client_key`) changed reads them
//! again ([`SharedPins::renew`]): the background task then connects with them and swaps the
//! new connection in, keeping the open one until then, or for as long as the new files are
//! refused. A renewed client certificate, or a store moved to another CA, needs no restart.
//!
//! This module is what is asked of the store; the connection (the primary, TLS, Sentinel,
//! renewal) is the `link` module's.

mod link;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::pins::PinInfo;
use crate::config;
use crate::throttle::Throttle;
pub use link::{redacted, Renewed, SharedError};
use link::{Link, Store};

/// The value an unpinned room's key holds for a while, so that every replica unpins it.
const TOMBSTONE: &str = "-";

/// Pins sent to the store in one script call while syncing.
pub const SYNC_BATCH: usize = 256;

/// How long requests place rooms alone after the store failed.
const REST: Duration = Duration::from_secs(1);

/// KEYS[1] the room; ARGV[1] the proposed node, ARGV[2] the expiry (ms), ARGV[3] a node the
/// room may be taken from ("" for none). Answers the room's node and 1 if it is the proposal
/// just written, 0 if the room was already there.
const CLAIM: &str = r"
local held = redis.call('GET', KEYS[1])
if held == false or held == '-' or held == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {ARGV[1], 1}
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {held, 0}
";

/// KEYS the rooms; ARGV[1] the expiry (ms), ARGV[i + 1] this replica's node for KEYS[i].
/// Answers, for each room, "" when the store agrees (its expiry refreshed, or the pin written
/// back if it had expired there), else what the store holds (a node, or the tombstone).
const SYNC: &str = r"
local out = {}
for i, key in ipairs(KEYS) do
  local ours = ARGV[i + 1]
  local held = redis.call('GET', key)
  if held == ours then
    redis.call('PEXPIRE', key, ARGV[1])
    out[i] = ''
  elseif held == false then
    redis.call('SET', key, ours, 'PX', ARGV[1])
    out[i] = ''
  else
    out[i] = held
  end
end
return out
";

/// What the store holds of a room this replica has pinned, as a sync finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// The same node (its expiry refreshed), or nothing (this replica's pin written back).
    Agreed,
    /// An operator unpinned the room on some replica.
    Unpinned,
    /// Another node: some replica moved the room there.
    On(String),
}

/// The shared pin store of one router replica.
pub struct SharedPins {
    link: Link,
    url: String,
    prefix: String,
    /// Keys carry the prefix as their hash tag (Redis Cluster).
    cluster: bool,
    expiry_ms: u64,
    timeout: Duration,
    sync_interval: Duration,
    claim: redis::Script,
    sync: redis::Script,
    /// Questions the store did not answer, warned about at most every ten seconds.
    errors: Throttle,
    epoch: Instant,
    /// Until when (ms since `epoch`) requests do not ask Redis, after a failure.
    resting_until_ms: AtomicU64,
    /// When (ms since `epoch`, plus one) Redis last answered, and last failed to.
    last_answer_ms: AtomicU64,
    last_failure_ms: AtomicU64,
}

impl SharedPins {
    /// A store for `config`, whose pins expire after `idle` without a request on any replica.
    /// Connects in [`connect`](Self::connect).
    pub fn new(config: &config::SharedPins, idle: Duration) -> Result<SharedPins, SharedError> {
        Ok(SharedPins {
            link: Link::new(config)?,
            url: config.url.clone(),
            prefix: config.prefix.clone(),
            cluster: config.cluster,
            expiry_ms: u64::try_from(idle.as_millis()).unwrap_or(u64::MAX).max(1),
            timeout: config.timeout,
            sync_interval: config.sync_interval,
            claim: redis::Script::new(CLAIM),
            sync: redis::Script::new(SYNC),
            errors: Throttle::default(),
            epoch: Instant::now(),
            resting_until_ms: AtomicU64::new(0),
            last_answer_ms: AtomicU64::new(0),
            last_failure_ms: AtomicU64::new(0),
        })
    }

    /// Whether Redis answers: it answered the last question put to it (a sync asks every
    /// `sync_interval`, so this is at most that old). False before the first answer.
    pub fn connected(&self) -> bool {
        let answered = self.last_answer_ms.load(Ordering::Relaxed);
        answered > 0 && answered >= self.last_failure_ms.load(Ordering::Relaxed)
    }

    /// Questions to the store that got no answer so far.
    pub fn errors(&self) -> u64 {
        self.errors.count()
    }

    /// Connects to Redis, unless connected already. The server calls it before it serves, so
    /// that a replica starting next to running ones asks Redis from its first request. With
    /// sentinels and `recheck`, asks them where the primary is even when connected, and moves
    /// there if it is elsewhere: a primary the sentinels replaced answers writes until they
    /// tell it (their next look at it, up to ten seconds on), and pins written there meanwhile
    /// would be lost. The background task rechecks before every sync.
    ///
    /// After [`renew`](Self::renew) it connects again with the files read anew, and keeps the
    /// connection it has while the new one fails.
    pub async fn connect(&self, recheck: bool) -> Result<(), SharedError> {
        self.link.connect(recheck).await
    }

    /// Reads the TLS files of `config` (the running store's section, reloaded) again, checking
    /// each as at start-up, for [`renew`](Self::renew).
    pub fn reread(config: &config::SharedPins) -> Result<Renewed, SharedError> {
        Ok(Renewed(link::primary(config)?))
    }

    /// Connects with the files read anew from the background task's next tick on (see
    /// [`connect`](Self::connect)).
    pub fn renew(&self, renewed: Renewed) {
        self.link.renew(renewed);
    }

    /// The address of the Redis server this replica is connected to (with sentinels, the
    /// primary they named last).
    pub fn connected_to(&self) -> Option<String> {
        self.link.current().map(|held| held.at)
    }

    /// How often a replica sends the store its pins.
    pub fn sync_interval(&self) -> Duration {
        self.sync_interval
    }

    /// Asks the store for the room's node, giving `node` if it has none (or has `replaceable`).
    /// Answers the node and whether it is `node`, just written.
    pub async fn claim(
        &self,
        room: &str,
        node: &str,
        replaceable: Option<&str>,
    ) -> Result<(String, bool), SharedError> {
        let mut connection = self.connection()?;
        let mut call = self.claim.key(self.key(room));
        call.arg(node)
            .arg(self.expiry_ms)
            .arg(replaceable.unwrap_or(""));
        let (held, written): (String, i64) = self.timed(call.invoke_async(&mut connection)).await?;
        Ok((held, written == 1))
    }

    /// The room's node in the store, if it holds one.
    pub async fn held(&self, room: &str) -> Result<Option<String>, SharedError> {
        let mut connection = self.connection()?;
        let mut get = redis::cmd("GET");
        get.arg(self.key(room));
        let held: Option<String> = self.timed(get.query_async(&mut connection)).await?;
        Ok(held.filter(|node| node != TOMBSTONE))
    }

    /// Tells the store an operator moved the room to `node` here.
    pub async fn moved(&self, room: &str, node: &str) -> Result<(), SharedError> {
        let mut connection = self.connection()?;
        let mut set = redis::cmd("SET");
        set.arg(self.key(room))
            .arg(node)
            .arg("PX")
            .arg(self.expiry_ms);
        self.timed(set.query_async::<()>(&mut connection)).await
    }

    /// Tells the store an operator unpinned the room: a tombstone for three sync intervals, so
    /// that every replica unpins it too. Answers the node the store held it on, if any.
    pub async fn unpinned(&self, room: &str) -> Result<Option<String>, SharedError> {
        let mut connection = self.connection()?;
        let lasts = u64::try_from((self.sync_interval * 3).as_millis()).unwrap_or(u64::MAX);
        let mut set = redis::cmd("SET");
        set.arg(self.key(room))
            .arg(TOMBSTONE)
            .arg("PX")
            .arg(lasts.max(1))
            .arg("GET");
        let held: Option<String> = self.timed(set.query_async(&mut connection)).await?;
        Ok(held.filter(|node| node != TOMBSTONE))
    }

    /// Sends a batch of this replica's live pins to the store, which refreshes their expiry
    /// there, and answers what it holds of each room.
    pub async fn sync(&self, batch: &[PinInfo]) -> Result<Vec<Held>, SharedError> {
        let mut connection = self.connection()?;
        let mut call = self.sync.prepare_invoke();
        call.arg(self.expiry_ms);
        for pin in batch {
            call.key(self.key(&pin.room)).arg(pin.node.as_str());
        }
        let held: Vec<String> = self.timed(call.invoke_async(&mut connection)).await?;
        let held = (batch.iter().zip(held)).map(|(pin, held)| match held {
            held if held.is_empty() || held == pin.node.as_str() => Held::Agreed,
            held if held == TOMBSTONE => Held::Unpinned,
            held => Held::On(held),
        });
        Ok(held.collect())
    }

    /// The room's key: the prefix and the room, or in a cluster `{prefix}room`, whose hash tag
    /// puts every pin in one slot, so that a sync batch's keys may go to one script.
    fn key(&self, room: &str) -> String {
        match self.cluster {
            true => format!("{{{}}}{room}", self.prefix),
            false => format!("{}{room}", self.prefix),
        }
    }

    fn connection(&self) -> Result<Store, SharedError> {
        if self.now_ms() < self.resting_until_ms.load(Ordering::Relaxed) {
            return Err(SharedError::Resting);
        }
        (self.link.current().map(|held| held.store)).ok_or(SharedError::NotConnected)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn timed<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, SharedError> {
        let answer = match tokio::time::timeout(self.timeout, call).await {
            Ok(answer) => answer?,
            Err(_) => return Err(SharedError::Timeout(self.timeout)),
        };
        self.last_answer_ms
            .fetch_max(self.now_ms() + 1, Ordering::Relaxed);
        Ok(answer)
    }

    /// Counts a question the store did not answer, and lets requests place rooms alone for a
    /// second (rather than each wait `timeout` for a store that just failed); warns at most
    /// every ten seconds.
    pub fn failed(&self, e: &SharedError) {
        if matches!(e, SharedError::Resting) {
            return;
        }
        self.link.failed();
        let now = self.now_ms();
        self.last_failure_ms.fetch_max(now + 1, Ordering::Relaxed);
        self.resting_until_ms
            .store(now + REST.as_millis() as u64, Ordering::Relaxed);
        if self.errors.due().is_some() {
            let failures = self.errors.count();
            tracing::warn!(error = %e, failures, url = %redacted(&self.url), "shared pin store did not answer; placing rooms on this router alone meanwhile");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            redacted("redis://app:s3cret@10.0.0.5:6379/2"),
            "redis://app:***@10.0.0.5:6379/2"
        );
        assert_eq!(redacted("redis://:s3cret@h/0"), "redis://:***@h/0");
        assert_eq!(redacted("redis://h:6379"), "redis://h:6379");
        assert_eq!(redacted("unix:///run/redis.sock"), "unix:///run/redis.sock");
    }
}
