//! Caps on open client connections, all clients together and per client, and the open-file
//! limit they are sized against.
//!
//! A connection over a cap is closed as it is accepted, before its TLS handshake: it costs a
//! file descriptor for a moment and nothing else, and the connections already open are not
//! touched.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::peer::ClientKey;

/// File descriptors kept out of the connection budget: listeners, the Redis, Prometheus and
/// health-check connections, log and config files.
const RESERVED_FILES: u64 = 64;

/// Raises this process's soft open-file limit to its hard limit, as far as the system allows;
/// the limit in force afterwards, if it can be read.
pub fn raise_open_file_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    }
}

/// The default cap on client connections for an open-file limit: half of what is left after
/// the reserve, because a proxied request or tunnel holds a connection to a node as well.
pub fn default_max_connections(open_files: u64) -> usize {
    let budget = open_files.saturating_sub(RESERVED_FILES) / 2;
    usize::try_from(budget.max(1)).unwrap_or(usize::MAX)
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The cap on all client connections.
    Full,
    /// The cap on one client's connections.
    ClientFull,
}

/// The open client connections of one or more listeners, and their caps.
pub struct Connections {
    /// The caps, which a reload may lower or raise: connections open over a lowered cap stay.
    max: AtomicUsize,
    max_per_client: AtomicUsize,
    open: AtomicUsize,
    per_client: Mutex<HashMap<ClientKey, usize>>,
    closed: Notify,
    /// Where the open count is shown (`None` for the admin listener's own connections).
    metrics: Option<Arc<Metrics>>,
}

/// An admitted connection; dropping it counts the connection out.
pub struct Admitted {
    connections: Arc<Connections>,
    /// Whom it counts for (`None`: a trusted proxy's connection before its PROXY header).
    client: Option<ClientKey>,
}

impl Connections {
    /// Caps of `max` connections in all and `max_per_client` from one client.
    pub fn new(max: usize, max_per_client: usize, metrics: Option<Arc<Metrics>>) -> Connections {
        Connections {
            max: AtomicUsize::new(max),
            max_per_client: AtomicUsize::new(max_per_client),
            open: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
            closed: Notify::new(),
            metrics,
        }
    }

    /// Counts in a connection from `ip` (`None`: from a trusted proxy, whose PROXY header names
    /// the client later, see [`Admitted::count_for`]), unless a cap is reached.
    pub fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Admitted, Refused> {
        self.admit_for(ip.map(ClientKey::of))
    }

    fn admit_for(self: &Arc<Self>, client: Option<ClientKey>) -> Result<Admitted, Refused> {
        let mut per_client = self
            .per_client
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.open.load(Ordering::Relaxed) >= self.max() {
            return Err(Refused::Full);
        }
        if let Some(client) = client {
            self.count_in(&mut per_client, client)?;
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        if let Some(metrics) = &self.metrics {
            metrics.client_connection_opened();
        }
        Ok(Admitted {
            connections: self.clone(),
            client,
        })
    }

    fn count_in(
        &self,
        per_client: &mut HashMap<ClientKey, usize>,
        client: ClientKey,
    ) -> Result<(), Refused> {
        let count = per_client.entry(client).or_insert(0);
        if *count >= self.max_per_client.load(Ordering::Relaxed) {
            return Err(Refused::ClientFull);
        }
        *count += 1;
        Ok(())
    }

    /// Connections open now.
    pub fn count(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// The cap on all connections.
    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// Caps connections from now on at `max` in all and `max_per_client` from one client (a
    /// reload). Connections already open stay, over a lowered cap too; new ones are refused
    /// until enough of them close.
    pub fn set_caps(&self, max: usize, max_per_client: usize) {
        self.max.store(max, Ordering::Relaxed);
        self.max_per_client.store(max_per_client, Ordering::Relaxed);
    }

    /// Completes when no connection is open.
    pub async fn all_closed(&self) {
        loop {
            // Created before the check: `notify_waiters` reaches it even before it is polled.
            let closed = self.closed.notified();
            if self.count() == 0 {
                return;
            }
            closed.await;
        }
    }
}

impl Admitted {
    /// Admits more connections of this one's client ([`Siblings::admit`]).
    pub fn siblings(&self) -> Siblings {
        Siblings {
            connections: self.connections.clone(),
            client: self.client,
        }
    }

    /// Counts a trusted proxy's connection for the client its PROXY header named, unless that
    /// client is at its cap. (A connection already counted for a client stays so.)
    pub fn count_for(&mut self, ip: IpAddr) -> Result<(), Refused> {
        if self.client.is_some() {
            return Ok(());
        }
        let client = ClientKey::of(ip);
        let connections = &self.connections;
        let mut per_client =
            (connections.per_client.lock()).unwrap_or_else(PoisonError::into_inner);
        connections.count_in(&mut per_client, client)?;
        self.client = Some(client);
        Ok(())
    }
}

/// Counts in more connections of one admitted connection's client.
#[derive(Clone)]
pub struct Siblings {
    connections: Arc<Connections>,
    client: Option<ClientKey>,
}

impl Siblings {
    /// One more connection of the client, unless a cap is reached: a WebSocket over one of its
    /// connection's HTTP/2 streams (RFC 8441) holds a connection to a node as a connection of
    /// its own would, and counts as one.
    pub fn admit(&self) -> Result<Admitted, Refused> {
        self.connections.admit_for(self.client)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let connections = &self.connections;
        if let Some(client) = self.client {
            let mut per_client = connections
                .per_client
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(count) = per_client.get_mut(&client) {
                *count -= 1;
                if *count == 0 {
                    per_client.remove(&client);
                }
            }
        }
        if let Some(metrics) = &connections.metrics {
            metrics.client_connection_closed();
        }
        if connections.open.fetch_sub(1, Ordering::Relaxed) == 1 {
            connections.closed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_and_release_per_client_and_in_all() {
        let connections = Arc::new(Connections::new(3, 2, None));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = connections.admit(Some(a)).unwrap();
        let _second = connections.admit(Some(a)).unwrap();
        assert_eq!(connections.admit(Some(a)).err(), Some(Refused::ClientFull));
        let _third = connections.admit(Some(b)).unwrap();
        assert_eq!(connections.admit(Some(b)).err(), Some(Refused::Full));
        assert_eq!(connections.count(), 3);
        drop(first);
        assert_eq!(connections.count(), 2);
        let _again = connections.admit(Some(a)).unwrap();
        assert!(connections.per_client.lock().unwrap().len() == 2);
    }

    #[test]
    fn new_caps_hold_for_new_connections_and_leave_open_ones() {
        let connections = Arc::new(Connections::new(10, 5, None));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let held: Vec<_> = (0..3)
            .map(|_| connections.admit(Some(a)).unwrap())
            .collect();
        connections.set_caps(4, 2);
        assert_eq!(connections.admit(Some(a)).err(), Some(Refused::ClientFull));
        let _other = connections.admit(Some(b)).unwrap();
        assert_eq!(connections.admit(Some(b)).err(), Some(Refused::Full));
        assert_eq!(connections.count(), 4, "the open ones stay");
        drop(held);
        let _again = connections.admit(Some(a)).unwrap();
        connections.set_caps(10, 5);
        let _more: Vec<_> = (0..4)
            .map(|_| connections.admit(Some(a)).unwrap())
            .collect();
    }

    #[test]
    fn a_proxied_connection_counts_for_the_client_its_header_names() {
        let connections = Arc::new(Connections::new(10, 1, None));
        let client: IpAddr = "2001:db8::7".parse().unwrap();
        let mut first = connections.admit(None).unwrap();
        let mut second = connections.admit(None).unwrap();
        first.count_for(client).unwrap();
        assert_eq!(second.count_for(client), Err(Refused::ClientFull));
        assert_eq!(connections.count(), 2);
        drop(first);
        second.count_for(client).unwrap();
        drop(second);
        assert_eq!(connections.count(), 0);
        assert!(connections.per_client.lock().unwrap().is_empty());
    }

    #[test]
    fn the_default_cap_leaves_half_the_files_for_upstream_connections() {
        assert_eq!(default_max_connections(1024), 480);
        assert_eq!(default_max_connections(524_288), 262_112);
        assert_eq!(default_max_connections(10), 1);
    }
}
