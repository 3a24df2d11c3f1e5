//! `[limits]`: what one client may hold or send, and how long each state of a client connection
//! may last.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check::Check;
use super::ConfigError;

/// `[limits]`: what one client may hold or send, and how long each state of a client connection
/// may last. Defaults follow what nginx and HAProxy ship; the README's "Security and limits"
/// section says why each is what it is.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request head (request line and headers), in bytes; larger gets `431`.
    pub max_request_head: usize,
    /// Most header fields in an HTTP/1.1 request head; more gets `431`.
    pub max_request_headers: usize,
    /// Longest room key, in characters; longer gets `400`.
    pub max_room_chars: usize,
    /// Most rooms pinned at once; beyond it new rooms are routed without a pin.
    pub max_pins: usize,
    /// TLS sessions kept for resumption (0: none). A browser opens a meeting's page, its XMPP
    /// WebSocket and its bridge channel on separate connections; each one after the first
    /// resumes the first's session and skips the certificate's signature and its checking.
    pub tls_sessions: usize,
    /// Time allowed for a client's TLS handshake.
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// Time for a request head: the first one after the TLS handshake (for HTTP/2, the
    /// preface and the first stream's headers), and an HTTP/1.1 head from its first byte.
    #[serde(with = "humantime_serde")]
    pub request_head_timeout: Duration,
    /// Time a connection may sit with no request in flight before it is closed (HTTP/1.1) or
    /// sent `GOAWAY` (HTTP/2).
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Longest pause in a request body the node is waiting for.
    #[serde(with = "humantime_serde")]
    pub request_body_timeout: Duration,
    /// Longest pause in a node's response body after its head.
    #[serde(with = "humantime_serde")]
    pub response_body_timeout: Duration,
    /// Longest a client may take no bytes of what the router sends it, on its connection or,
    /// over HTTP/2, on one stream (flow control); also the kernel's limit on bytes sent to it
    /// that stay unacknowledged (`TCP_USER_TIMEOUT`), and the silence after which it sends an
    /// idle client a keep-alive probe.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Open client connections, all listeners together; `None`: half the open-file limit
    /// (the other half is for the upstream connections those clients' requests need).
    pub max_connections: Option<usize>,
    /// Open client connections from one address (an IPv6 client: its /64).
    pub max_connections_per_client: usize,
    /// New rooms one client address may create per second, on average.
    pub new_rooms_per_second: f64,
    /// New rooms one client address may create at once before the rate applies.
    pub new_room_burst: u32,
    /// Streams one HTTP/2 connection may have open at once.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 streams a client may reset before the router has read them, per connection.
    pub h2_max_pending_reset_streams: usize,
    /// HTTP/2 streams the router may reset for protocol errors before it closes the connection.
    pub h2_max_local_reset_streams: usize,
    /// HTTP/2 streams a client may cancel before their answer within
    /// [`CANCELLED_STREAMS_WINDOW`]; one more and the connection gets `GOAWAY`.
    pub h2_max_cancelled_streams: u32,
    /// Seconds announced in `Retry-After` when no node can take a room.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_request_head: 16 * 1024,
            max_request_headers: 100,
            max_room_chars: 200,
            max_pins: 2_000_000,
            tls_sessions: 20_000,
            tls_handshake_timeout: Duration::from_secs(10),
            request_head_timeout: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(75),
            request_body_timeout: Duration::from_secs(60),
            response_body_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            max_connections: None,
            max_connections_per_client: 5000,
            new_rooms_per_second: 10.0,
            new_room_burst: 100,
            h2_max_concurrent_streams: 100,
            h2_max_pending_reset_streams: 20,
            h2_max_local_reset_streams: 1024,
            h2_max_cancelled_streams: 50,
            retry_after: Duration::from_secs(5),
        }
    }
}

impl Limits {
    /// The keys a reload applies (the server's caps on connections, the new-room rate, the pin
    /// table's size); the others are read at start.
    pub const LIVE: [&'static str; 5] = [
        "max_connections",
        "max_connections_per_client",
        "new_rooms_per_second",
        "new_room_burst",
        "max_pins",
    ];
}

/// The window [`Limits::h2_max_cancelled_streams`] counts in.
pub const CANCELLED_STREAMS_WINDOW: Duration = Duration::from_secs(10);

impl Limits {
    /// Checks the ranges of the counts and sizes (the durations are checked with the others).
    pub(super) fn check(&self, check: &Check) -> Result<(), ConfigError> {
        let l = self;
        let ranges = [
            ("limits.max_request_head", l.max_request_head, 1024, 1 << 20),
            (
                "limits.max_request_headers",
                l.max_request_headers,
                16,
                4096,
            ),
            ("limits.max_room_chars", l.max_room_chars, 1, 4096),
            ("limits.tls_sessions", l.tls_sessions, 0, 10_000_000),
        ];
        for (key, value, low, high) in ranges {
            if !(low..=high).contains(&value) {
                return Err(check.invalid(key, value, format!("must be between {low} and {high}")));
            }
        }
        let counts = [
            ("limits.max_pins", l.max_pins),
            ("limits.max_connections", l.max_connections.unwrap_or(1)),
            (
                "limits.max_connections_per_client",
                l.max_connections_per_client,
            ),
            ("limits.new_room_burst", l.new_room_burst as usize),
            (
                "limits.h2_max_concurrent_streams",
                l.h2_max_concurrent_streams as usize,
            ),
            (
                "limits.h2_max_pending_reset_streams",
                l.h2_max_pending_reset_streams,
            ),
            (
                "limits.h2_max_local_reset_streams",
                l.h2_max_local_reset_streams,
            ),
            (
                "limits.h2_max_cancelled_streams",
                l.h2_max_cancelled_streams as usize,
            ),
        ];
        if let Some((key, _)) = counts.into_iter().find(|&(_, value)| value == 0) {
            return Err(check.invalid(key, 0, "must be at least 1"));
        }
        let rate = l.new_rooms_per_second;
        if !(rate.is_finite() && rate > 0.0) {
            let key = "limits.new_rooms_per_second";
            return Err(check.invalid(key, rate, "must be a number above 0"));
        }
        Ok(())
    }
}
