//! Who a client is: its address, and the key the limits that count per client count by.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Who sent a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// The client's address: the PROXY header's source when a trusted balancer sent one, else
    /// the connection's peer. What the node is told (`X-Forwarded-For`, `X-Real-IP`), what logs
    /// show, and what spreads room-less requests.
    pub addr: SocketAddr,
    /// Whether that address is a trusted proxy (`server.trusted_proxies`): only then are the
    /// forwarding headers the request carries (`X-Forwarded-For`, `X-Real-IP`, `Forwarded`)
    /// passed on; otherwise they are the client's own claims and are replaced.
    pub trusted: bool,
}

impl Client {
    /// A client connecting from `addr` directly, whose headers are not believed.
    pub fn direct(addr: SocketAddr) -> Client {
        Client {
            addr,
            trusted: false,
        }
    }
}

/// The unit per-client limits count by: an IPv4 address, or an IPv6 client's /64 (a single
/// subscriber is handed a whole /64, so counting by address would let one client be 2^64).
/// IPv4-mapped IPv6 addresses count as their IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    /// The key of a client connecting from `ip`.
    pub fn of(ip: IpAddr) -> ClientKey {
        match ip {
            IpAddr::V4(v4) => ClientKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    ClientKey(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let a = ClientKey::of("2001:db8:1:2::1".parse().unwrap());
        let b = ClientKey::of("2001:db8:1:2:ffff:0:0:9".parse().unwrap());
        let other = ClientKey::of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, other);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        let mapped = ClientKey::of("::ffff:192.0.2.7".parse().unwrap());
        assert_eq!(mapped, ClientKey::of("192.0.2.7".parse().unwrap()));
        assert_eq!(mapped.to_string(), "192.0.2.7");
    }
}
