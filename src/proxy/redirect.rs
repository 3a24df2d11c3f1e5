//! Redirect mode: `307` to the node's public URL with the request's own path and query.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode, Uri};
use http_body_util::{Either, Full};

use super::{errors, Body};
use crate::fleet::Node;

/// The `307` for this request and node.
pub fn to_node(node: &Node, uri: &Uri) -> Response<Body> {
    let Some(base) = node.spec.public_url.as_deref() else {
        return errors::plain(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("node {} has no public_url to redirect to", node.id),
        );
    };
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let location = format!("{base}{target}");
    let Ok(value) = HeaderValue::from_str(&location) else {
        return errors::plain(
            StatusCode::BAD_REQUEST,
            "request target cannot be redirected",
        );
    };
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(format!(
        "this room is served by {location}\n"
    )))));
    *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, value);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
