//! Request ids: accepted from `X-Request-Id` (or generated), returned in the
//! response header, attached to every log line of the request through a
//! tracing span, and readable by error bodies through a task-local.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

pub const HEADER: &str = "x-request-id";

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The current request's id, inside a request.
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Longest client request id kept.
const MAX_LEN: usize = 64;

/// Accepts a client id made of id characters (letters, digits, `-_.:`), at
/// most [`MAX_LEN`] long; otherwise makes one. Request ids land in
/// append-only audit rows, which erasure cannot touch: free text may not.
fn accept(value: Option<&HeaderValue>) -> String {
    value
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= MAX_LEN
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string())
}

/// Middleware: sets the id, runs the request in a span carrying it, echoes it back.
pub async fn layer(mut req: Request, next: Next) -> Response {
    let id = accept(req.headers().get(HEADER));
    if let Ok(v) = HeaderValue::from_str(&id) {
        req.headers_mut().insert(HEADER, v);
    }
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
    let started = std::time::Instant::now();
    span.in_scope(|| tracing::debug!("request started"));
    let mut resp = REQUEST_ID
        .scope(id.clone(), next.run(req))
        .instrument(span.clone())
        .await;
    span.in_scope(|| {
        tracing::info!(
            status = resp.status().as_u16(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "request"
        )
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(HEADER, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_id_shaped_request_ids_are_kept() {
        let keep = |v: &str| accept(Some(&HeaderValue::from_str(v).unwrap())) == v;
        assert!(keep("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"));
        assert!(keep("req_42.retry:1"));
        // Free text could carry a person's words into append-only audit rows.
        assert!(!keep("alice@example.com"));
        assert!(!keep(&"x".repeat(MAX_LEN + 1)));
        assert!(!keep("a b"));
        assert_eq!(accept(None).len(), 32);
    }
}
