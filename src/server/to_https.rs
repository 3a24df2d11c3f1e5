//! The plain-HTTP listener's answers: the same URL on HTTPS, except for ACME HTTP-01 challenges
//! (`/.well-known/acme-challenge/{token}`), which it answers itself: from the router's own
//! issuance, or from `server.acme_webroot` (an external certbot `--webroot`, or another replica's
//! ACME state folder). Never redirected and never forwarded to a node: a node cannot know the
//! answer, and an ACME server that follows a redirect to HTTPS would fail on a first issuance.

use std::path::Path;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::acme::Http01Answers;

/// Where the HTTP-01 challenge answers are.
pub(super) struct Challenges {
    /// The router's own issuance's.
    pub(super) answers: std::sync::Arc<Http01Answers>,
    /// `server.acme_webroot`.
    pub(super) webroot: Option<std::path::PathBuf>,
}

/// The plain-HTTP listener's answer to `req`.
pub(super) async fn answer(
    req: &Request<Incoming>,
    https_port: u16,
    challenges: &Challenges,
) -> Response<Full<Bytes>> {
    match req.uri().path().strip_prefix(CHALLENGE_PATH) {
        Some(token) => challenge(token, challenges).await,
        None => to_https(req, https_port),
    }
}

const CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// The key authorization for `token`: `200` with it, or `404`.
async fn challenge(token: &str, challenges: &Challenges) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: String| {
        let mut response = Response::new(Full::new(Bytes::from(text)));
        *response.status_mut() = status;
        (response.headers_mut())
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        response
    };
    // Tokens are base64url (RFC 8555 §8.3): nothing else may name a file.
    let valid = !token.is_empty()
        && token.len() <= 256
        && (token.bytes()).all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return plain(StatusCode::NOT_FOUND, "no such challenge\n".into());
    }
    if let Some(answer) = challenges.answers.get(token) {
        return plain(StatusCode::OK, answer);
    }
    if let Some(webroot) = &challenges.webroot {
        let file = Path::new(webroot).join(&CHALLENGE_PATH[1..]).join(token);
        if let Ok(answer) = tokio::fs::read_to_string(&file).await {
            return plain(StatusCode::OK, answer.trim_end().to_owned());
        }
    }
    plain(StatusCode::NOT_FOUND, "no such challenge\n".into())
}

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
    let host = crate::proxy::headers::request_host(req.uri(), req.headers())
        .and_then(|h| h.to_str().ok()?.parse::<http::uri::Authority>().ok());
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
