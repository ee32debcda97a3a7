//! MCP over streamable HTTP at `/mcp`: a session per client, each bound to
//! the API key that opened it. Authentication and the Host and Origin
//! checks are the server's (`auth.rs`, `guard.rs`); the tools are `mcp.rs`'s.

use std::sync::Arc;

use engram_core::ErrorCode;
use engram_core::access::Principal;
use engram_core::service::JobQueue;

use crate::error::HttpCode;
use crate::mcp::MemoryMcp;

/// The `/mcp` service: a session per client. Authentication, and the Host
/// and Origin checks (`guard.rs`), are the server's: every request reaches a
/// tool with its API key's principal; `shutdown` ends every session.
pub fn http_service(jobs: JobQueue, shutdown: tokio_util::sync::CancellationToken) -> axum::Router {
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    let mut http_config = StreamableHttpServerConfig::default();
    // Host and Origin checks are the server's, for every route (`guard.rs`).
    http_config.allowed_hosts = Vec::new();
    http_config.cancellation_token = shutdown;
    let service = StreamableHttpService::new(
        move || Ok(MemoryMcp::new(jobs.clone(), None, "http")),
        LocalSessionManager::default().into(),
        http_config,
    );
    let owners = Arc::new(SessionOwners::default());
    axum::Router::new()
        .fallback_service(service)
        .layer(axum::middleware::from_fn(move |req, next| {
            owned_sessions(owners.clone(), req, next)
        }))
}

/// Which caller opened each MCP session on this node (`key:<id>`, or the
/// operator): a session answers only to the key that opened it.
#[derive(Default)]
struct SessionOwners(
    std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
);

impl SessionOwners {
    /// Sessions remembered at most; the oldest are forgotten first (rmcp
    /// ends idle sessions long before this many pile up).
    const MAX: usize = 100_000;

    fn map(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (String, std::time::Instant)>>
    {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn owner(&self, session: &str) -> Option<String> {
        self.map().get(session).map(|(o, _)| o.clone())
    }

    fn insert(&self, session: String, owner: String) {
        let mut map = self.map();
        if map.len() >= Self::MAX
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(session, (owner, std::time::Instant::now()));
    }

    fn remove(&self, session: &str) {
        self.map().remove(session);
    }
}

/// Binds every MCP session to the caller that opened it: another key that
/// learns a session id gets `404` (as for a session that does not exist),
/// so it can neither resume the session — whose replayed events may hold
/// another tenant's tool results — nor delete it.
async fn owned_sessions(
    owners: Arc<SessionOwners>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    const HEADER: &str = "mcp-session-id";
    let caller = req
        .extensions()
        .get::<Principal>()
        .map(|p| p.actor("operator"))
        .unwrap_or_default();
    let session = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(s) = &session
        && owners.owner(s).is_some_and(|o| o != caller)
    {
        return crate::error::ApiError::new(
            HttpCode::Core(ErrorCode::NotFound),
            "no MCP session with this id",
        )
        .into_response();
    }
    let deleting = req.method() == axum::http::Method::DELETE;
    let resp = next.run(req).await;
    match (
        &session,
        resp.headers().get(HEADER).and_then(|v| v.to_str().ok()),
    ) {
        // A new session: remember who opened it.
        (None, Some(created)) => owners.insert(created.to_owned(), caller),
        (Some(s), _) if deleting && resp.status().is_success() => owners.remove(s),
        _ => {}
    }
    resp
}
