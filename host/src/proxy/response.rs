//! Responses: the short ones the proxy writes itself, and a backend's
//! turned into the client's.

use http::header::{CONTENT_LENGTH, CONTENT_TYPE, SET_COOKIE};
use http::{HeaderValue, Response, StatusCode, Version};
use hyper::body::Incoming;

use super::body::{Completion, ProxyBody};
use super::headers::remove_hop_by_hop;
use crate::upstream::Backend;
use crate::upstream::pool::Sender;

/// A short plain-text response written by the proxy itself.
pub fn error_response(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let text = format!(
        "{} {}: {message}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut resp = Response::new(ProxyBody::full(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Turns a backend's response into the client's. The HTTP/1.1 connection
/// goes back to the pool when the body ends, unless the backend said it
/// would close it.
pub fn respond(
    resp: Response<Incoming>,
    sender: Sender,
    mut done: Completion,
    backend: &Backend,
    set_cookie: Option<HeaderValue>,
    read_timeout: std::time::Duration,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    let seen = remove_hop_by_hop(&mut parts.headers);
    if let Sender::H1(s) = sender
        && parts.version == Version::HTTP_11
        && !seen.close
    {
        done.reuse = Some((s, backend.pool.clone()));
    }
    // RFC 9112 §6.3: chunked framing wins over a Content-Length sent with
    // it; hyper decoded the chunks, so the length must not go on.
    if seen.transfer_encoding {
        parts.headers.remove(CONTENT_LENGTH);
    }
    if let Some(cookie) = set_cookie {
        parts.headers.append(SET_COOKIE, cookie);
    }
    Response::from_parts(parts, ProxyBody::upstream(body, done, read_timeout))
}
