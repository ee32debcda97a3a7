//! Authentication and per-key rate limits, for every HTTP transport (native
//! REST, `/mcp`, and whatever routes are added later).
//!
//! The middleware resolves a [`Principal`] from `Authorization: Bearer <key>`
//! (also `Token <key>` and `X-API-Key: <key>`, as Mem0's clients send), puts
//! it in the request's extensions, and charges the key's token bucket. What
//! the principal may touch is decided by the service, not here.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use engram_core::ErrorCode;
use engram_core::access::Principal;
use engram_core::ctx::RequestCtx;
use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::AppState;
use crate::error::{ApiError, HttpCode};

/// Paths anyone may call: probes, metrics and the API description.
pub const PUBLIC_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics", "/openapi.json"];

/// How callers prove who they are.
#[derive(Clone)]
pub enum AuthMode {
    /// API keys (the default).
    Keys,
    /// No authentication: every request is the local operator. For localhost
    /// development only; the binary refuses it on a non-loopback address.
    InsecureNoAuth,
}

/// Per-key request rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitConfig {
    /// Requests per minute a key may make when it sets no limit of its own (0: no limit).
    pub per_minute: u32,
    /// Requests a key may make at once after being idle.
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            per_minute: 1200,
            burst: 100,
        }
    }
}

/// governor's clock over tokio's, so tests can pause and advance time.
#[derive(Debug, Clone, Copy, Default)]
struct TokioClock;

impl Clock for TokioClock {
    type Instant = std::time::Instant;

    fn now(&self) -> Self::Instant {
        tokio::time::Instant::now().into_std()
    }
}

type Bucket = RateLimiter<NotKeyed, InMemoryState, TokioClock, StateInformationMiddleware>;

/// One token bucket per key, each with the key's own rate (GCRA, via governor).
pub struct RateLimits {
    config: RateLimitConfig,
    buckets: Mutex<HashMap<String, (u32, Arc<Bucket>)>>,
}

/// The outcome of charging one request, as headers.
struct Charge {
    limit: u32,
    remaining: u32,
    reset: Duration,
    retry_after: Option<Duration>,
}

impl RateLimits {
    pub fn new(config: RateLimitConfig) -> RateLimits {
        RateLimits {
            config,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Charges one request to `principal`; `None` when it is not limited.
    fn charge(&self, principal: &Principal) -> Option<Charge> {
        let key = principal.key_id.as_ref()?;
        let per_minute = NonZeroU32::new(principal.rate_limit.unwrap_or(self.config.per_minute))?;
        let burst = NonZeroU32::new(self.config.burst.min(per_minute.get()).max(1))?;
        let bucket = {
            let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
            let entry = buckets
                .entry(key.clone())
                .or_insert_with(|| (per_minute.get(), Arc::new(bucket(per_minute, burst))));
            if entry.0 != per_minute.get() {
                *entry = (per_minute.get(), Arc::new(bucket(per_minute, burst)));
            }
            entry.1.clone()
        };
        let interval = Duration::from_secs(60) / per_minute.get();
        Some(match bucket.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                Charge {
                    limit: burst.get(),
                    remaining,
                    reset: interval * (burst.get() - remaining),
                    retry_after: None,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(TokioClock.now());
                Charge {
                    limit: burst.get(),
                    remaining: 0,
                    reset: interval * burst.get(),
                    retry_after: Some(wait),
                }
            }
        })
    }
}

impl RateLimits {
    /// Charges one request to `principal`; how long to wait when it is over its limit.
    pub(crate) fn retry_after(&self, principal: &Principal) -> Option<Duration> {
        self.charge(principal).and_then(|c| c.retry_after)
    }
}

fn bucket(per_minute: NonZeroU32, burst: NonZeroU32) -> Bucket {
    RateLimiter::direct_with_clock(Quota::per_minute(per_minute).allow_burst(burst), TokioClock)
        .with_middleware::<StateInformationMiddleware>()
}

fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn set_header(headers: &mut HeaderMap, name: &'static str, value: u64) {
    headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
}

impl Charge {
    fn apply(&self, headers: &mut HeaderMap) {
        set_header(headers, "ratelimit-limit", self.limit.into());
        set_header(headers, "ratelimit-remaining", self.remaining.into());
        set_header(headers, "ratelimit-reset", whole_seconds(self.reset));
        if let Some(wait) = self.retry_after {
            set_header(headers, "retry-after", whole_seconds(wait).max(1));
        }
    }
}

/// The key a request presents, if any.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, rest) = v.split_once(' ')?;
        return (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token"))
            .then(|| rest.trim());
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn unauthorized(detail: &str) -> Response {
    let mut resp = ApiError::new(HttpCode::Core(ErrorCode::Unauthorized), detail).into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"engram\""),
    );
    resp
}

/// Middleware: resolve the principal, charge its bucket, run the request.
pub async fn layer(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    if PUBLIC_PATHS.contains(&req.uri().path()) || crate::ui::handles(req.uri().path()) {
        // The dashboard authenticates by session and charges the key itself.
        return next.run(req).await;
    }
    let principal = match &app.config.auth {
        AuthMode::InsecureNoAuth => Principal::operator(),
        AuthMode::Keys => {
            let Some(token) = presented_key(req.headers()) else {
                metrics::counter!("engram_auth_failures_total", "reason" => "missing").increment(1);
                return unauthorized(
                    "missing API key: send `Authorization: Bearer <key>` (create one with `engram keys create`)",
                );
            };
            match app.keys.authenticate(token).await {
                Ok(p) => p,
                Err(e) if e.code == ErrorCode::Unauthorized => {
                    metrics::counter!("engram_auth_failures_total", "reason" => "invalid")
                        .increment(1);
                    return unauthorized(&e.message);
                }
                Err(e) => return ApiError::from(e).into_response(),
            }
        }
    };
    let charge = app.limits.charge(&principal);
    if let Some(charge) = &charge
        && let Some(wait) = charge.retry_after
    {
        metrics::counter!("engram_rate_limited_total").increment(1);
        let mut resp = ApiError::new(
            HttpCode::RateLimited,
            format!(
                "rate limit exceeded for this API key; retry in {}s",
                whole_seconds(wait).max(1)
            ),
        )
        .into_response();
        charge.apply(resp.headers_mut());
        return resp;
    }
    req.extensions_mut().insert(principal);
    let mut resp = next.run(req).await;
    if let Some(charge) = &charge {
        charge.apply(resp.headers_mut());
    }
    resp
}

/// The caller of a REST handler: the principal the middleware resolved,
/// with the request id, ready for the service.
pub struct Caller(pub RequestCtx);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let principal = parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| {
                ApiError::new(
                    HttpCode::Core(ErrorCode::Unauthorized),
                    "this route needs an API key",
                )
            })?;
        let request_id = parts
            .headers
            .get(crate::request_id::HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(Caller(RequestCtx::new(principal, "api", request_id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_read_from_the_usual_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_key(&h), None);
        h.insert("x-api-key", HeaderValue::from_static("k1"));
        assert_eq!(presented_key(&h), Some("k1"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Token k2"));
        assert_eq!(presented_key(&h), Some("k2"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer k3"));
        assert_eq!(presented_key(&h), Some("k3"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(presented_key(&h), None);
    }

    #[tokio::test(start_paused = true)]
    async fn buckets_refill_with_time() {
        let limits = RateLimits::new(RateLimitConfig {
            per_minute: 60,
            burst: 2,
        });
        let p = Principal {
            key_id: Some("k".into()),
            ..Principal::operator()
        };
        assert!(
            limits.charge(&Principal::operator()).is_none(),
            "operator is not limited"
        );
        assert_eq!(limits.charge(&p).unwrap().remaining, 1);
        assert_eq!(limits.charge(&p).unwrap().remaining, 0);
        let refused = limits.charge(&p).unwrap();
        assert_eq!(refused.retry_after.map(whole_seconds), Some(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(limits.charge(&p).unwrap().retry_after.is_none());
        // A key's own limit replaces the default.
        let slow = Principal {
            key_id: Some("slow".into()),
            rate_limit: Some(1),
            ..Principal::operator()
        };
        assert!(limits.charge(&slow).unwrap().retry_after.is_none());
        let refused = limits.charge(&slow).unwrap();
        assert_eq!(refused.retry_after.map(whole_seconds), Some(60));
    }
}
