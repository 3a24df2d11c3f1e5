//! Requests the router answers itself before it reads a room: methods it never forwards and
//! framing it will not pass on. Each rule is one nginx applies too, so a node behind the router
//! would have refused the request anyway; answering it here keeps it from placing a room, and
//! keeps the router and the node from reading one request two ways (request smuggling).

use http::{header, Method, Request, StatusCode, Version};

/// What the router makes of a request before routing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screened {
    /// Route it.
    Pass,
    /// `OPTIONS *`: a question about the server itself (RFC 9110 §9.3.7), answered by the router.
    ServerOptions,
    /// Refuse it with this status and one-line reason.
    Refuse(StatusCode, &'static str),
}

/// The methods Jitsi's web and mobile clients send, named in `Allow` on a `405` and in the
/// answer to `OPTIONS *`.
pub const ALLOW: &str = "GET, HEAD, POST, OPTIONS";

/// Screens a request; `websocket` when it asks for a WebSocket.
pub fn screen<B>(req: &Request<B>, websocket: bool) -> Screened {
    let method = req.method();
    if method == Method::CONNECT && !websocket {
        let reason = "CONNECT is not supported, but for a WebSocket over HTTP/2";
        return Screened::Refuse(StatusCode::METHOD_NOT_ALLOWED, reason);
    }
    // TRACE echoes a request back, cookies and all (cross-site tracing).
    if method == Method::TRACE || method.as_str() == "TRACK" {
        let reason = "TRACE and TRACK are not supported";
        return Screened::Refuse(StatusCode::METHOD_NOT_ALLOWED, reason);
    }
    // RFC 9112 §3.2.4: the asterisk form names no resource, and only OPTIONS may use it.
    if req.uri().path() == "*" {
        return match method == Method::OPTIONS {
            true => Screened::ServerOptions,
            false => Screened::Refuse(StatusCode::BAD_REQUEST, "request target * is for OPTIONS"),
        };
    }
    let headers = req.headers();
    // RFC 9112 §3.2: 400 to an HTTP/1.1 request without Host, or to any with two.
    match headers.get_all(header::HOST).iter().count() {
        0 if req.version() == Version::HTTP_11 => {
            return Screened::Refuse(StatusCode::BAD_REQUEST, "missing Host header");
        }
        0 | 1 => {}
        _ => return Screened::Refuse(StatusCode::BAD_REQUEST, "more than one Host header"),
    }
    // RFC 9112 §6.1: 501 to a transfer coding the server does not know. The router decodes one
    // `chunked` and forwards the body as it decoded it: a `gzip` under it, or a second
    // `chunked`, would reach the node as if it were the content. nginx takes exactly `chunked`.
    let mut codings = (headers.get_all(header::TRANSFER_ENCODING).iter())
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|coding| !coding.is_empty());
    match (codings.next(), codings.next()) {
        (None, _) => Screened::Pass,
        (Some(coding), None) if coding.eq_ignore_ascii_case(b"chunked") => Screened::Pass,
        _ => {
            let reason = "transfer codings other than one chunked are not supported";
            Screened::Refuse(StatusCode::NOT_IMPLEMENTED, reason)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(head: &[(&str, &str)], method: &str, target: &str) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(target);
        for (name, value) in head {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    fn refused(head: &[(&str, &str)], method: &str, target: &str) -> Option<u16> {
        match screen(&request(head, method, target), false) {
            Screened::Refuse(status, _) => Some(status.as_u16()),
            _ => None,
        }
    }

    #[test]
    fn framing_nginx_refuses_is_refused() {
        let host = ("host", "meet.example.com");
        assert_eq!(refused(&[host], "GET", "/room"), None);
        assert_eq!(
            refused(&[host, ("host", "evil")], "GET", "/room"),
            Some(400)
        );
        assert_eq!(refused(&[], "GET", "/room"), Some(400));
        let chunked = ("transfer-encoding", "Chunked");
        assert_eq!(refused(&[host, chunked], "POST", "/http-bind"), None);
        let gzip = ("transfer-encoding", "gzip, chunked");
        assert_eq!(refused(&[host, gzip], "POST", "/http-bind"), Some(501));
        let two = [host, chunked, ("transfer-encoding", "identity")];
        assert_eq!(refused(&two, "POST", "/http-bind"), Some(501));
        let twice = ("transfer-encoding", "chunked, chunked");
        assert_eq!(refused(&[host, twice], "POST", "/http-bind"), Some(501));
    }

    #[test]
    fn methods_and_the_asterisk() {
        let host = ("host", "meet.example.com");
        assert_eq!(refused(&[host], "TRACE", "/room"), Some(405));
        assert_eq!(refused(&[host], "TRACK", "/room"), Some(405));
        assert_eq!(refused(&[host], "CONNECT", "/room"), Some(405));
        assert_eq!(refused(&[host], "PROPFIND", "/room"), None);
        assert_eq!(refused(&[host], "GET", "*"), Some(400));
        let options = request(&[host], "OPTIONS", "*");
        assert_eq!(screen(&options, false), Screened::ServerOptions);
    }
}
