//! Prometheus metrics: the process-wide recorder, the HTTP middleware that
//! times every request, and `GET /metrics`.
//!
//! Everything is pulled: nothing leaves the process unless something scrapes
//! `/metrics`. The service records its own metrics (search latency by vector
//! path, hit rate, injected tokens, memory operations; see
//! [`engram_core::telemetry`]) through the same `metrics` facade.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::AppState;
use crate::error::ApiError;

/// Seconds per HTTP request, by method, route and status.
pub const HTTP_SECONDS: &str = "engram_http_request_duration_seconds";

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const TOKEN_BUCKETS: &[f64] = &[0.0, 25.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1600.0, 3200.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder once per process; later calls reuse it.
/// `None` when another recorder was installed first (then `/metrics` is empty).
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(engram_core::telemetry::INJECTED_TOKENS.into()),
                        TOKEN_BUCKETS,
                    )
                });
            // The Prometheus recorder, observed for the dashboard's overview
            // (crate::activity); every metric still reaches Prometheus.
            let installed = builder.map_err(|e| e.to_string()).and_then(|b| {
                let recorder = b.build_recorder();
                let handle = recorder.handle();
                metrics::set_global_recorder(crate::activity::Observed {
                    inner: recorder,
                    activity: crate::activity::global(),
                })
                .map(|()| handle)
                .map_err(|e| e.to_string())
            });
            match installed {
                Ok(handle) => Some(handle),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed; /metrics will be empty");
                    None
                }
            }
        })
        .clone()
}

/// A method as a label: the standard ones by name, any other string a
/// client sends as `other` (a label value per string would be an
/// unbounded number of series).
fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// How often the store's gauges (counts over whole tables) are refreshed,
/// however often `/metrics` is scraped.
pub const GAUGES_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// When the store gauges were last refreshed (per server).
#[derive(Default)]
pub struct GaugeClock(std::sync::Mutex<Option<Instant>>);

impl GaugeClock {
    /// Whether a refresh is due now; if so, it counts as done.
    fn due(&self) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < GAUGES_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

/// Middleware: count and time every request by its route template (never the raw path).
pub async fn layer(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| {
            if req.uri().path().starts_with("/mcp") {
                "/mcp".to_owned()
            } else {
                "unmatched".to_owned()
            }
        });
    let method = method_label(req.method()).to_owned();
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::histogram!(HTTP_SECONDS, &labels).record(started.elapsed().as_secs_f64());
    metrics::counter!("engram_http_requests_total", &labels).increment(1);
    resp
}

/// `GET /metrics`: Prometheus text format. The store's gauges are refreshed
/// at most every [`GAUGES_EVERY`]. With `--metrics-token` the scraper must
/// send it (`Authorization: Bearer <token>`).
pub async fn metrics_get(State(app): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    if let Some(token) = &app.config.metrics_token {
        let sent = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        // Digests compared, so the time taken says nothing of the token.
        use sha2::{Digest, Sha256};
        if Sha256::digest(sent.as_bytes()) != Sha256::digest(token.as_bytes()) {
            return ApiError::new(
                crate::error::HttpCode::Core(engram_core::ErrorCode::Unauthorized),
                "/metrics needs the metrics token (`Authorization: Bearer <token>`)",
            )
            .into_response();
        }
    }
    if app.gauges.due() {
        refresh_gauges(&app).await;
    }
    let body = app.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// The gauges that count whole tables: memories, versions, jobs.
async fn refresh_gauges(app: &AppState) {
    match app.memory.store_stats().await {
        Ok(stats) => {
            metrics::gauge!("engram_memories").set(stats.memories as f64);
            metrics::gauge!("engram_memory_versions").set(stats.versions as f64);
            metrics::gauge!("engram_history_events").set(stats.history_events as f64);
            metrics::gauge!("engram_store_bytes").set(stats.bytes as f64);
            metrics::gauge!("engram_indexed_vectors").set(stats.indexed_vectors as f64);
        }
        Err(e) => tracing::warn!(error = %e, "metrics: store gauges not refreshed"),
    }
    metrics::gauge!("engram_llm_configured").set(if app.jobs.pipeline().is_some() {
        1.0
    } else {
        0.0
    });
    if let Ok(c) = app.jobs.counts().await {
        engram_core::telemetry::job_counts(&c);
    }
    if let Ok(n) = app.webhooks.pending().await {
        metrics::gauge!("engram_webhook_queue").set(n as f64);
    }
    if let Ok((all, disabled)) = app.webhooks.counts().await {
        metrics::gauge!("engram_webhooks").set(all as f64);
        metrics::gauge!("engram_webhooks_disabled").set(disabled as f64);
    }
}
