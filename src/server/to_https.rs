//! The plain-HTTP listener's one answer: the same URL on HTTPS.

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

/// `308` to the same URL on HTTPS.
pub(super) fn to_https(req: &Request<Incoming>, https_port: u16) -> Response<Full<Bytes>> {
    let answer = |status: StatusCode, text: String, location: Option<HeaderValue>| {
        let mut response = Response::new(Full::new(Bytes::from(text)));
        *response.status_mut() = status;
        if let Some(location) = location {
            response.headers_mut().insert(header::LOCATION, location);
        }
        response
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok());
    let Some(host) = host else {
        return answer(
            StatusCode::BAD_REQUEST,
            "missing or invalid Host header\n".into(),
            None,
        );
    };
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let location = format!("https://{}{port}{target}", host.host());
    match HeaderValue::from_str(&location) {
        Ok(value) => answer(
            StatusCode::PERMANENT_REDIRECT,
            format!("use {location}\n"),
            Some(value),
        ),
        Err(_) => answer(
            StatusCode::BAD_REQUEST,
            "request target cannot be redirected\n".into(),
            None,
        ),
    }
}
