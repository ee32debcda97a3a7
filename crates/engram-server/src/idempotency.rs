//! `Idempotency-Key` on any POST that writes (outside `/mcp`): the same key
//! with the same request replays the first response (marked
//! `Idempotent-Replayed: true`); the same key with a different request is
//! `409 conflict`; while the first is still running, a repeat is `409` too.
//! Keys are per caller (API key). As at Stripe, a record lives for a time to
//! live (24 h by default; the sweeper purges older ones) and each caller
//! keeps at most `IDEMPOTENCY_MAX_PER_CALLER`, oldest dropped first.
//!
//! Not kept: 5xx answers and answers asking to be retried (a retry runs
//! again), and any answer that carries a secret ([`CarriesSecret`]: a new
//! API key). Such a request is recorded as done without its body, and a
//! replay answers `409` saying so: a secret is never written to disk.
//! POSTs that only read (searches, Mem0's page listing) skip all of this
//! and never take the store's writer.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use engram_core::ErrorCode;
use engram_core::access::Principal;
use engram_core::memory::hex;
use engram_core::ports::{
    IDEMPOTENCY_MAX_PER_CALLER, IdemBegin, MAX_IDEMPOTENCY_KEY_LEN, StoredResponse,
};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::error::{ApiError, HttpCode};

pub const HEADER: &str = "idempotency-key";

/// A response extension: this answer carries a secret (an API key, a
/// signing secret) and must never be stored.
#[derive(Debug, Clone, Copy)]
pub struct CarriesSecret;

/// The stored "content type" of an answer that was not kept.
const WITHHELD: &str = "application/x-engram-withheld";

/// POST routes that only read: no record, no write.
const READ_ONLY: &[&str] = &[
    "/v1/memories/search",
    "/v3/memories/search/",
    "/v2/memories/search/",
    "/search",
    "/v3/memories/",
    "/v2/memories/",
];

pub async fn layer(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if req.method() != Method::POST || path.starts_with("/mcp") || READ_ONLY.contains(&path) {
        return next.run(req).await;
    }
    let Some(key) = req.headers().get(HEADER).cloned() else {
        return next.run(req).await;
    };
    let key = match key.to_str() {
        Ok(k)
            if !k.is_empty()
                && k.len() <= MAX_IDEMPOTENCY_KEY_LEN
                && k.chars().all(|c| c.is_ascii_graphic()) =>
        {
            k.to_owned()
        }
        _ => {
            return ApiError::invalid(format!(
                "`Idempotency-Key` must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters"
            ))
            .into_response();
        }
    };
    let caller = match req.extensions().get::<Principal>() {
        Some(p) => p.actor("operator"),
        None => return next.run(req).await,
    };
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, app.config.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(
                HttpCode::PayloadTooLarge,
                "request body is larger than the server's limit",
            )
            .into_response();
        }
    };
    let mut h = Sha256::new();
    h.update(parts.method.as_str());
    h.update(b"\n");
    h.update(parts.uri.to_string());
    h.update(b"\n");
    h.update(&bytes);
    let hash = hex(&h.finalize());
    let store = app.memory.idempotency();
    match store
        .idem_begin(
            &caller,
            &key,
            &hash,
            app.memory.now(),
            IDEMPOTENCY_MAX_PER_CALLER,
        )
        .await
    {
        Err(e) => return ApiError::from(e).into_response(),
        Ok(IdemBegin::Mismatch) => {
            return ApiError::new(
                HttpCode::Core(ErrorCode::Conflict),
                "this Idempotency-Key was used for a different request; use a new key",
            )
            .into_response();
        }
        Ok(IdemBegin::InFlight) => {
            return ApiError::new(
                HttpCode::Core(ErrorCode::Conflict),
                "a request with this Idempotency-Key is still running; retry later",
            )
            .into_response();
        }
        Ok(IdemBegin::Replay(stored)) if stored.content_type == WITHHELD => {
            return ApiError::new(
                HttpCode::Core(ErrorCode::Conflict),
                "the first answer to this Idempotency-Key carried a secret, which is never stored, \
                 so it cannot be replayed; the request did succeed (GET /v1/keys lists the key it made)",
            )
            .into_response();
        }
        Ok(IdemBegin::Replay(stored)) => {
            metrics::counter!("engram_idempotent_replays_total").increment(1);
            let mut resp = (
                axum::http::StatusCode::from_u16(stored.status)
                    .unwrap_or(axum::http::StatusCode::OK),
                stored.body,
            )
                .into_response();
            if let Ok(ct) = HeaderValue::from_str(&stored.content_type) {
                resp.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            resp.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return resp;
        }
        Ok(IdemBegin::New) => {}
    }
    let resp = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let status = resp.status();
    // 5xx answers, and any answer asking to be retried, are not kept: the
    // retry under the same key must run again.
    if status.is_server_error() || resp.headers().contains_key(header::RETRY_AFTER) {
        if let Err(e) = store.idem_abort(&caller, &key).await {
            tracing::error!(error = %e, "dropping an idempotency reservation");
        }
        return resp;
    }
    if resp.extensions().get::<CarriesSecret>().is_some() {
        let withheld = StoredResponse {
            status: status.as_u16(),
            content_type: WITHHELD.to_owned(),
            body: Vec::new(),
        };
        if let Err(e) = store.idem_complete(&caller, &key, &withheld).await {
            tracing::error!(error = %e, "recording an idempotent request");
        }
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            let _ = store.idem_abort(&caller, &key).await;
            return ApiError::new(
                HttpCode::Core(ErrorCode::Internal),
                format!("reading the response: {e}"),
            )
            .into_response();
        }
    };
    let stored = StoredResponse {
        status: status.as_u16(),
        content_type: parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_owned(),
        body: bytes.to_vec(),
    };
    if let Err(e) = store.idem_complete(&caller, &key, &stored).await {
        tracing::error!(error = %e, "storing an idempotent response");
    }
    Response::from_parts(parts, Body::from(bytes))
}
