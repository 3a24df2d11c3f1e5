//! The PROXY protocol header (v1 text, v2 binary) a load balancer in front of the router sends
//! before the client's bytes, naming the client's address.
//!
//! Only peers in `[server] trusted_proxies` may send it, and with `[server] proxy_protocol` on
//! they must: a header from any other peer could claim any address, and a trusted peer's
//! connection without one is a misconfigured balancer whose clients would all look like it. Both
//! close the connection. Any other peer is served as a direct client (an operator's own checks
//! may bypass the balancer).
//!
//! The header is read with `peek` first, so that a direct client's first bytes stay in the
//! socket for TLS or HTTP, and then consumed to its exact length; it is parsed by `ppp` (the
//! parser behind several Rust proxies, fuzzed, both versions). The caller bounds the whole read
//! by the handshake timeout, so a slow or dripping header is cut like a slow handshake.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::v2;
use ppp::HeaderResult;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::config::TrustedProxies;
use crate::metrics::ProxyRefusal as Refusal;

/// The v2 header's fixed start.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The v1 header's start.
const V1_SIGNATURE: &[u8; 6] = b"PROXY ";
/// The longest header read: a v1 line is at most 107 bytes; a v2 header carries addresses
/// (at most 216 bytes) and the balancer's TLVs (AWS and GCP send tens of bytes).
const MAX_HEADER: usize = 1024;

/// How the first bytes of a connection compare with the PROXY signatures.
#[derive(Debug, PartialEq, Eq)]
enum Start {
    /// They are not a PROXY header.
    Other,
    /// They begin one (or are too few to tell).
    Undecided,
    /// A whole header of this many bytes.
    Header(usize),
}

fn start(bytes: &[u8]) -> Start {
    let begins = |signature: &[u8]| {
        let n = bytes.len().min(signature.len());
        bytes[..n] == signature[..n]
    };
    if !begins(V1_SIGNATURE) && !begins(V2_SIGNATURE) {
        return Start::Other;
    }
    if bytes.starts_with(V2_SIGNATURE) && bytes.len() >= 16 {
        let len = 16 + usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
        return if bytes.len() >= len || len > MAX_HEADER {
            Start::Header(len)
        } else {
            Start::Undecided
        };
    }
    if bytes.starts_with(V1_SIGNATURE) {
        if let Some(end) = bytes.windows(2).position(|w| w == b"\r\n") {
            return Start::Header(end + 2);
        }
        if bytes.len() >= 107 {
            return Start::Header(bytes.len());
        }
    }
    Start::Undecided
}

/// The client address a whole header names: its source, or `None` for a header that names
/// none (v1 `UNKNOWN`, v2 `LOCAL`: the balancer's own health check).
fn source(header: &[u8]) -> Result<Option<SocketAddr>, Refusal> {
    match HeaderResult::parse(header) {
        HeaderResult::V1(Ok(h)) => Ok(match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => {
                Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
            }
            ppp::v1::Addresses::Tcp6(a) => {
                Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
            }
            ppp::v1::Addresses::Unknown => None,
        }),
        HeaderResult::V2(Ok(h)) => Ok(match (h.command, h.addresses) {
            (v2::Command::Local, _) => None,
            (_, v2::Addresses::IPv4(a)) => {
                Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
            }
            (_, v2::Addresses::IPv6(a)) => {
                Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
            }
            (_, v2::Addresses::Unix(_) | v2::Addresses::Unspecified) => None,
        }),
        _ => Err(Refusal::Malformed),
    }
}

/// Reads the PROXY step of a connection from `peer`: the address of the client behind a
/// trusted proxy, or the peer itself when it is a direct client (or the proxy's own check).
pub async fn read(
    tcp: &mut TcpStream,
    peer: SocketAddr,
    trusted: &TrustedProxies,
) -> Result<SocketAddr, Refusal> {
    let is_trusted = trusted.contains(peer.ip());
    let mut buf = [0u8; MAX_HEADER];
    let mut seen = 0;
    let len = loop {
        let n = tcp.peek(&mut buf).await.map_err(|_| Refusal::Closed)?;
        if n == 0 {
            return Err(Refusal::Closed);
        }
        match start(&buf[..n]) {
            Start::Other if is_trusted => return Err(Refusal::Missing),
            Start::Other => return Ok(peer),
            Start::Header(_) if !is_trusted => return Err(Refusal::Untrusted),
            Start::Header(len) if len > MAX_HEADER => return Err(Refusal::Malformed),
            Start::Header(len) => break len,
            // A header arrives in pieces: `peek` answers at once while nothing new came.
            Start::Undecided if n == seen => tokio::time::sleep(Duration::from_millis(5)).await,
            Start::Undecided => seen = n,
        }
    };
    let header = &mut buf[..len];
    tcp.read_exact(header).await.map_err(|_| Refusal::Closed)?;
    Ok(match source(header)? {
        Some(addr) => SocketAddr::new(addr.ip().to_canonical(), addr.port()),
        None => peer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_bytes_tell_a_header_from_tls_and_http() {
        assert_eq!(start(b"\x16\x03\x01\x02\x00"), Start::Other, "a TLS hello");
        assert_eq!(start(b"POST /http-bind"), Start::Other);
        assert_eq!(start(b"PRI * HTTP/2.0"), Start::Other);
        assert_eq!(start(b"PR"), Start::Undecided);
        assert_eq!(start(b"PROXY TCP4 1.2.3.4"), Start::Undecided);
        let v1 = b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n\x16\x03";
        assert_eq!(start(v1), Start::Header(v1.len() - 2));
        assert_eq!(start(&[b'P'; 200][..]), Start::Other);
        assert_eq!(start(b"PROXY "), Start::Undecided);
        assert_eq!(start(&V2_SIGNATURE[..7]), Start::Undecided);
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend([
            0x21, 0x11, 0, 12, 192, 0, 2, 1, 198, 51, 100, 1, 0xdc, 0x04, 1, 0xbb,
        ]);
        assert_eq!(start(&v2[..20]), Start::Undecided);
        assert_eq!(start(&v2), Start::Header(28));
        let mut long = V2_SIGNATURE.to_vec();
        long.extend([0x21, 0x11, 0xff, 0xff]);
        assert_eq!(
            start(&long),
            Start::Header(16 + 0xffff),
            "too long: refused"
        );
    }

    #[test]
    fn the_source_is_the_client_and_local_headers_name_none() {
        let v1 = b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 443\r\n";
        let addr = source(v1).unwrap().unwrap();
        assert_eq!(addr, "[2001:db8::1]:4000".parse().unwrap());
        assert_eq!(source(b"PROXY UNKNOWN\r\n"), Ok(None));
        let mut local = V2_SIGNATURE.to_vec();
        local.extend([0x20, 0x00, 0, 0]);
        assert_eq!(source(&local), Ok(None));
        assert_eq!(
            source(b"PROXY TCP4 999.0.0.1 1.1.1.1 1 2\r\n"),
            Err(Refusal::Malformed)
        );
    }
}
