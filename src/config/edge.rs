//! What `[server]` says of the peers in front of the router: the proxies whose PROXY header
//! and forwarding headers are believed.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

/// `server.trusted_proxies`: addresses and CIDR ranges (`"10.0.0.0/8"`, `"2001:db8::/32"`,
/// `"192.0.2.7"`) of the load balancers and proxies in front of the router.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Whether `ip` is one of them (an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nets: Vec<String> = self.0.iter().map(IpNet::to_string).collect();
        write!(f, "[{}]", nets.join(", "))
    }
}

impl<'de> Deserialize<'de> for TrustedProxies {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let texts = Vec::<String>::deserialize(deserializer)?;
        let parse = |text: &String| {
            (text.parse::<IpNet>())
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                .map(|net| net.trunc())
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "{text:?} is not an IP address or a CIDR range (like \"10.0.0.0/8\")"
                    ))
                })
        };
        texts
            .iter()
            .map(parse)
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(list: &[&str]) -> Result<TrustedProxies, serde_json::Error> {
        serde_json::from_value(serde_json::json!(list))
    }

    #[test]
    fn ranges_and_single_addresses_both_count() {
        let t = trusted(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]).unwrap();
        for ip in ["10.1.2.3", "192.0.2.7", "::ffff:10.9.9.9", "2001:db8:5::1"] {
            assert!(t.contains(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["192.0.2.8", "11.0.0.1", "2001:db9::1"] {
            assert!(!t.contains(ip.parse().unwrap()), "{ip}");
        }
        let e = trusted(&["10.0.0/8"]).unwrap_err().to_string();
        assert!(
            e.contains("\"10.0.0/8\" is not an IP address or a CIDR range"),
            "{e}"
        );
    }
}
