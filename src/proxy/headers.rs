//! Header hygiene between client and node (RFC 9110 §7.6.1) and the router's own headers.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Uri, Version};

use crate::room::Fetch;

/// Headers that describe one connection, never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Real-IP`.
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// `X-Jitsi-Shard`: the node that answered.
pub const X_JITSI_SHARD: HeaderName = HeaderName::from_static("x-jitsi-shard");

/// Whether a request asks for a WebSocket: an HTTP/1.1 `GET` with `Upgrade: websocket` (RFC 6455
/// §4.1: the handshake is a `GET`; another method's `Upgrade` is dropped as hop-by-hop), or an
/// HTTP/2 extended `CONNECT` (RFC 8441).
pub fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    match req.version() {
        Version::HTTP_11 => {
            req.method() == Method::GET
                && has_token(req.headers(), &header::CONNECTION, "upgrade")
                && (req.headers().get(header::UPGRADE))
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        }
        // RFC 8441: an extended CONNECT whose `:protocol` is `websocket`.
        Version::HTTP_2 => {
            req.method() == Method::CONNECT
                && (req.extensions().get::<hyper::ext::Protocol>())
                    .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
        }
        _ => false,
    }
}

/// What a request loads ([`Fetch`]): a page into a window or frame when the browser says so
/// (`Sec-Fetch-Dest: document` or `iframe`), or, from a browser that sends no `Sec-Fetch-Dest`,
/// when it asks for HTML first, as navigations do (`Accept: text/html,…`; scripts and API calls
/// ask for `*/*` or JSON).
pub fn fetch(headers: &HeaderMap) -> Fetch {
    const DEST: HeaderName = HeaderName::from_static("sec-fetch-dest");
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let document = match text(DEST) {
        Some(dest) => dest.eq_ignore_ascii_case("document") || dest.eq_ignore_ascii_case("iframe"),
        None => text(header::ACCEPT).is_some_and(|accept| accept.starts_with("text/html")),
    };
    match document {
        true => Fetch::Document,
        false => Fetch::Resource,
    }
}

fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
///
/// A message carries a handful of names and usually none or one of these, so this scans the
/// names it has rather than removing each hop-by-hop name (a removal hashes its name): in a
/// callgrind profile of proxied requests, the removals took about 1,000 instructions a message,
/// twice a request.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.keys().any(|name| name == header::CONNECTION) {
        // Names `Connection` lists beyond the usual ones, which the scan below removes anyway
        // (`close` names no header).
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|token| {
                !token.eq_ignore_ascii_case("close")
                    && !token.eq_ignore_ascii_case(header::UPGRADE.as_str())
                    && !HOP_BY_HOP
                        .iter()
                        .any(|name| token.eq_ignore_ascii_case(name.as_str()))
            })
            .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
            .collect();
        for name in &named {
            headers.remove(name);
        }
    }
    while let Some(name) = headers.keys().find(|name| is_hop_by_hop(name)).cloned() {
        headers.remove(&name);
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::UPGRADE || HOP_BY_HOP.contains(name)
}

/// A header value naming `ip`. An IPv4 address is written digit by digit: `Display` (which
/// supports padding) took about 1,300 instructions, as much as the rest of a request's header
/// preparation.
fn ip_value(ip: IpAddr) -> Option<HeaderValue> {
    match ip {
        IpAddr::V4(v4) => {
            let mut text = [0u8; 15];
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[len] = b'.';
                    len += 1;
                }
                for (place, shown) in [(100, octet >= 100), (10, octet >= 10), (1, true)] {
                    if shown {
                        text[len] = b'0' + octet / place % 10;
                        len += 1;
                    }
                }
            }
            HeaderValue::from_bytes(&text[..len]).ok()
        }
        IpAddr::V6(_) => HeaderValue::from_str(&ip.to_string()).ok(),
    }
}

fn keep_upgrade(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// What the forwarded request should say about the client.
pub struct Forwarded<'a> {
    /// The client's address.
    pub client: IpAddr,
    /// Whether the client is a trusted proxy: its forwarding headers are passed on (the
    /// address appended to `X-Forwarded-For`); otherwise they are replaced.
    pub trusted: bool,
    /// The host the client asked for ([`request_host`]).
    pub host: Option<&'a HeaderValue>,
    /// Keep the client's `Host` (true) or use the node's authority.
    pub preserve_host: bool,
    /// The node's authority, used as `Host` when not preserving.
    pub upstream_host: &'a str,
    /// Whether this is a WebSocket upgrade to carry through.
    pub upgrade: bool,
}

/// Prepares request headers for the node.
pub fn prepare_request(headers: &mut HeaderMap, fwd: &Forwarded<'_>) {
    strip_hop_by_hop(headers);
    if fwd.upgrade {
        keep_upgrade(headers);
    }
    join_cookies(headers);
    if !fwd.trusted {
        // A client's own claims about who it is: anyone can send them.
        for name in [X_FORWARDED_FOR, X_REAL_IP, header::FORWARDED] {
            headers.remove(name);
        }
    }
    if let Some(client) = ip_value(fwd.client) {
        let xff = match forwarded_for(headers) {
            Some(previous) => HeaderValue::from_str(&format!("{previous}, {}", fwd.client)).ok(),
            None => Some(client.clone()),
        };
        if let Some(xff) = xff {
            headers.insert(X_FORWARDED_FOR, xff);
        }
        // A trusted proxy's X-Real-IP names the client behind it.
        if let header::Entry::Vacant(real_ip) = headers.entry(X_REAL_IP) {
            real_ip.insert(client);
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    if let Some(host) = fwd.host {
        headers.insert(X_FORWARDED_HOST, host.clone());
    }
    let host = match (fwd.preserve_host, fwd.host) {
        (true, Some(host)) => Some(host.clone()),
        _ => HeaderValue::from_str(fwd.upstream_host).ok(),
    };
    if let Some(host) = host {
        headers.insert(header::HOST, host);
    }
}

/// The `X-Forwarded-For` list so far, its fields joined (a proxy may have sent several).
fn forwarded_for(headers: &HeaderMap) -> Option<String> {
    let fields: Vec<&str> = (headers.get_all(&X_FORWARDED_FOR).iter())
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    (!fields.is_empty()).then(|| fields.join(", "))
}

/// HTTP/2 clients may split `Cookie` into several fields; HTTP/1.1 wants one (RFC 9113 §8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join("; ");
    if let Ok(value) = HeaderValue::from_str(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// Prepares response headers for the client.
pub fn prepare_response(headers: &mut HeaderMap, upgraded: bool) {
    strip_hop_by_hop(headers);
    if upgraded {
        keep_upgrade(headers);
    }
}

/// Marks a response with the node that served it, unless the node already did.
pub fn mark_shard(headers: &mut HeaderMap, node: &str) {
    if let header::Entry::Vacant(entry) = headers.entry(X_JITSI_SHARD) {
        if let Ok(value) = HeaderValue::from_str(node) {
            entry.insert(value);
        }
    }
}

/// The value of cookie `name`, if the request carries it.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v.trim_matches('"'))
        })
}

/// The host a request is for: its target's authority when it has one (HTTP/2's `:authority`,
/// or an HTTP/1.1 absolute-form target, which wins over `Host` by RFC 9112 §3.2.2), without
/// any `user@`; else its `Host` field.
pub fn request_host(uri: &Uri, headers: &HeaderMap) -> Option<HeaderValue> {
    match uri.authority() {
        Some(authority) => {
            let text = authority.as_str();
            let host = text.rsplit_once('@').map_or(text, |(_, host)| host);
            HeaderValue::from_str(host).ok()
        }
        None => headers.get(header::HOST).cloned(),
    }
}

/// The path and query of the page that led to this request (`Referer`), when that page is on
/// this request's host: for an asset, the page that loaded it. Browsers send the whole URL to
/// the same origin, also where they withhold cookies (a page in another site's iframe).
pub fn referring_page<B>(req: &Request<B>) -> Option<PathAndQuery> {
    let referer: Uri = req
        .headers()
        .get(header::REFERER)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    let host = request_host(req.uri(), req.headers())?;
    let same_host = (referer.authority()?.as_str()).eq_ignore_ascii_case(host.to_str().ok()?);
    same_host
        .then(|| referer.path_and_query().cloned())
        .flatten()
}

/// Whether a response's body is HTML (`Content-Type: text/html…`).
pub fn is_html(headers: &HeaderMap) -> bool {
    (headers.get(header::CONTENT_TYPE))
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.trim_start().to_ascii_lowercase().starts_with("text/html"))
}

/// `Set-Cookie` for the affinity cookie naming `node`.
///
/// DESIGN note. `SameSite=None; Partitioned`: a room embedded in another site's page (the
/// iframe API) is a third-party frame, where a `Lax` cookie is neither stored nor sent, and
/// its bridge channels need the cookie as much as a room opened on its own. `Partitioned`
/// (CHIPS) keeps the cookie to the embedding site, so it is allowed where third-party cookies
/// are blocked and tracks no one across sites; browsers that do not know the attribute ignore
/// it. The cookie only names a node, so a cross-site request carrying it gains nothing.
pub fn affinity_cookie(name: &str, node: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{name}={node}; Path=/; Secure; HttpOnly; SameSite=None; Partitioned"
    ))
    .ok()
}

/// Approximate size of a request head: request target plus header fields.
pub fn head_size<B>(req: &Request<B>) -> usize {
    let target = req.uri().path_and_query().map_or(1, |pq| pq.as_str().len());
    let fields: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    req.method().as_str().len() + target + 12 + fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_navigation_is_a_document_fetch() {
        let fetch_of = |fields: &[(&'static str, &'static str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in fields {
                headers.insert(*name, HeaderValue::from_static(value));
            }
            fetch(&headers)
        };
        let html = ("accept", "text/html,application/xhtml+xml,*/*;q=0.8");
        assert_eq!(
            fetch_of(&[("sec-fetch-dest", "document"), html]),
            Fetch::Document
        );
        assert_eq!(fetch_of(&[("sec-fetch-dest", "iframe")]), Fetch::Document);
        assert_eq!(fetch_of(&[html]), Fetch::Document);
        assert_eq!(
            fetch_of(&[("sec-fetch-dest", "script"), html]),
            Fetch::Resource
        );
        assert_eq!(fetch_of(&[("accept", "*/*")]), Fetch::Resource);
        assert_eq!(fetch_of(&[]), Fetch::Resource);
    }

    #[test]
    fn the_request_host_is_the_targets_authority_else_host() {
        let host = |target: &str, field: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(field) = field {
                headers.insert(header::HOST, HeaderValue::from_str(field).unwrap());
            }
            request_host(&target.parse().unwrap(), &headers)
        };
        let meet = Some(HeaderValue::from_static("meet.example.com"));
        assert_eq!(host("/room", Some("meet.example.com")), meet);
        assert_eq!(host("http://meet.example.com/room", Some("other")), meet);
        assert_eq!(host("https://user:pw@meet.example.com/room", None), meet);
        assert_eq!(host("/room", None), None);
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        let host = HeaderValue::from_static("meet.example.com");
        let fwd = Forwarded {
            client: "10.1.2.3".parse().unwrap(),
            trusted: true,
            host: Some(&host),
            preserve_host: true,
            upstream_host: "10.0.0.1:80",
            upgrade: false,
        };
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("192.0.2.1"));
        prepare_request(&mut h, &fwd);
        for gone in ["connection", "x-secret", "keep-alive", "te"] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        assert_eq!(h["x-kept"], "1");
        assert_eq!(
            h[X_FORWARDED_FOR], "192.0.2.1, 10.1.2.3",
            "a trusted proxy's list"
        );
        assert_eq!(h[X_REAL_IP], "10.1.2.3");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert_eq!(h[X_FORWARDED_HOST], "meet.example.com");
        assert_eq!(h[header::HOST], "meet.example.com");
    }

    #[test]
    fn forwarding_headers_are_kept_from_trusted_proxies_only() {
        let sent = |h: &mut HeaderMap| {
            h.append(X_FORWARDED_FOR, HeaderValue::from_static("198.51.100.1"));
            h.append(X_FORWARDED_FOR, HeaderValue::from_static("198.51.100.2"));
            h.insert(X_REAL_IP, HeaderValue::from_static("198.51.100.1"));
            h.insert(
                header::FORWARDED,
                HeaderValue::from_static("for=198.51.100.1"),
            );
        };
        let mut fwd = Forwarded {
            client: "2001:db8::9".parse().unwrap(),
            trusted: false,
            host: None,
            preserve_host: true,
            upstream_host: "10.0.0.1:80",
            upgrade: false,
        };
        let mut h = HeaderMap::new();
        sent(&mut h);
        prepare_request(&mut h, &fwd);
        assert_eq!(
            h[X_FORWARDED_FOR], "2001:db8::9",
            "a client's claims are replaced"
        );
        assert_eq!(h[X_REAL_IP], "2001:db8::9");
        assert!(!h.contains_key(header::FORWARDED));

        fwd.trusted = true;
        let mut h = HeaderMap::new();
        sent(&mut h);
        prepare_request(&mut h, &fwd);
        assert_eq!(
            h[X_FORWARDED_FOR],
            "198.51.100.1, 198.51.100.2, 2001:db8::9"
        );
        assert_eq!(
            h[X_REAL_IP], "198.51.100.1",
            "the proxy's word for its client"
        );
        assert_eq!(h[header::FORWARDED], "for=198.51.100.1");
    }

    #[test]
    fn hop_by_hop_headers_go_in_any_order_and_case() {
        let mut h = HeaderMap::new();
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.append(header::CONNECTION, HeaderValue::from_static("close"));
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, X-Other"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert(header::TRAILER, HeaderValue::from_static("x"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(header::DATE, HeaderValue::from_static("now"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept", "date"]);
        // Nothing to remove: nothing changes.
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
    }

    proptest::proptest! {
        #[test]
        fn client_addresses_read_as_display_writes_them(ip: IpAddr) {
            let shown = ip.to_string();
            proptest::prop_assert_eq!(ip_value(ip).unwrap(), shown.as_str());
        }
    }

    #[test]
    fn client_address_edges() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.100.9",
            "::1",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_value(ip).unwrap(), ip.to_string().as_str());
        }
    }

    #[test]
    fn cookies_are_found_and_joined() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(
            header::COOKIE,
            HeaderValue::from_static("jitsi_router_node=n2; b=2"),
        );
        assert_eq!(cookie(&h, "jitsi_router_node"), Some("n2"));
        assert_eq!(cookie(&h, "c"), None);
        join_cookies(&mut h);
        assert_eq!(h[header::COOKIE], "a=1; jitsi_router_node=n2; b=2");
    }

    #[test]
    fn the_node_s_own_shard_header_wins() {
        let mut h = HeaderMap::new();
        mark_shard(&mut h, "a");
        assert_eq!(h[X_JITSI_SHARD], "a");
        mark_shard(&mut h, "b");
        assert_eq!(h[X_JITSI_SHARD], "a");
    }
}
