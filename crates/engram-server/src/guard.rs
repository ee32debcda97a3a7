//! What a web page may make a browser send to Engram: nothing, unless the
//! operator says so. Every request on every route (native, Mem0, `/mcp`)
//! passes three checks before authentication, with auth on or off:
//!
//! - **Host.** On a loopback listen address (the laptop case) — or whenever
//!   the operator lists host names — the `Host` header must name loopback
//!   (`localhost`, `127.0.0.1`, `[::1]`), the listen address, or a listed
//!   name (`--allowed-host`). A page that rebinds its own DNS name to
//!   127.0.0.1 sends its own name, and gets `421`.
//! - **Origin.** A browser names the page behind every cross-origin
//!   request, and every POST, in `Origin`. A request whose origin is not the
//!   server's own (`http(s)://` + its `Host`) or one the operator allows
//!   (`--cors-origin`) gets `403`. Requests without `Origin` (curl, SDKs,
//!   MCP clients) are not browsers' and pass.
//! - **Body type.** A request body must be JSON (`application/json`,
//!   `…+json`) or JSON Lines (`application/x-ndjson`): the content types a
//!   page can send without a CORS preflight (`text/plain`, forms) are
//!   refused with `415`, so no "simple request" reaches a handler. The one
//!   exception is the dashboard's own forms (`POST /ui/…`, URL-encoded),
//!   which reach their handler only with the session's CSRF token.
//!
//! Allowed cross origins get CORS answers (preflight included), so a web
//! app the operator trusts can call the API with a key.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, HttpCode};

/// The operator's settings for [`layer`].
#[derive(Debug, Clone, Default)]
pub struct GuardConfig {
    /// The address the server listens on (`None`: unknown, as in tests).
    pub listen: Option<SocketAddr>,
    /// Browser origins allowed to call, besides the server's own (`https://app.example`).
    pub cors_origins: Vec<String>,
    /// Host names the server answers to besides loopback names and the listen address.
    pub allowed_hosts: Vec<String>,
}

impl GuardConfig {
    /// Whether `Host` is checked: on loopback, or when names are listed.
    fn checks_host(&self) -> bool {
        !self.allowed_hosts.is_empty() || self.listen.is_some_and(|a| a.ip().is_loopback())
    }

    /// Whether `host` (the `Host` header's name, without port) may be served.
    fn host_allowed(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        let loopback = matches!(host.as_str(), "localhost" | "127.0.0.1" | "[::1]" | "::1")
            || host.ends_with(".localhost");
        let listen = self.listen.is_some_and(|a| {
            let ip = a.ip().to_string();
            host == ip || host == format!("[{ip}]")
        });
        loopback
            || listen
            || self
                .allowed_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(&host))
    }

    /// Whether a browser page at `origin` may call, for a request sent to `host_header`.
    fn origin_allowed(&self, origin: &str, host_header: Option<&str>) -> bool {
        if self
            .cors_origins
            .iter()
            .any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(origin))
        {
            return true;
        }
        // Same origin: the page was served by this server, at this host.
        host_header.is_some_and(|h| {
            ["http://", "https://"]
                .iter()
                .any(|scheme| origin.eq_ignore_ascii_case(&format!("{scheme}{h}")))
        })
    }

    fn cross_origin_allowed(&self, origin: &str) -> bool {
        self.cors_origins
            .iter()
            .any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(origin))
    }
}

/// The name part of a `Host` header (`[::1]:8420` → `[::1]`).
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(name, _)| name)
}

/// Whether a request carries a body: a length above zero, chunks, or (an
/// HTTP/2 stream without a length) a body that is not known to be empty.
fn has_body(req: &Request) -> bool {
    use axum::body::HttpBody;
    let headers = req.headers();
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
        || !req.body().is_end_stream()
}

/// JSON, or JSON Lines; never a type a page may send without a preflight.
fn json_type(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
        || essence == "application/x-ndjson"
        || essence == "application/jsonl"
}

/// A dashboard form: a `POST` under `/ui/` with a URL-encoded body. Its
/// handler runs only with the session's CSRF token (`crate::ui`).
fn dashboard_form(req: &Request) -> bool {
    req.method() == Method::POST
        && req.uri().path().starts_with("/ui/")
        && req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|t| {
                t.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
}

const ALLOW_HEADERS: &str = "authorization, content-type, idempotency-key, x-api-key, x-request-id, \
mcp-session-id, mcp-protocol-version, last-event-id";
const EXPOSE_HEADERS: &str =
    "mcp-session-id, x-request-id, idempotent-replayed, retry-after, ratelimit-remaining";

pub async fn layer(config: Arc<GuardConfig>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if config.checks_host()
        && let Some(h) = host
        && !config.host_allowed(host_name(h))
    {
        return ApiError::new(
            HttpCode::HostNotAllowed,
            format!(
                "this server does not answer to host `{}`; the operator can allow it with --allowed-host",
                host_name(h)
            ),
        )
        .into_response();
    }
    let origin = headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("null").to_owned());
    if let Some(o) = &origin
        && !config.origin_allowed(o, host)
    {
        return ApiError::new(
            HttpCode::OriginNotAllowed,
            format!(
                "requests from web pages at `{o}` are refused; the operator can allow an origin with --cors-origin"
            ),
        )
        .into_response();
    }
    let cross = origin
        .as_deref()
        .filter(|o| config.cross_origin_allowed(o))
        .and_then(|o| HeaderValue::from_str(o).ok());
    if req.method() == Method::OPTIONS
        && let Some(allowed) = &cross
    {
        // A preflight from an allowed origin.
        let mut resp = StatusCode::NO_CONTENT.into_response();
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed.clone());
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        h.insert(header::VARY, HeaderValue::from_static("origin"));
        return resp;
    }
    if has_body(&req) && !json_type(req.headers()) && !dashboard_form(&req) {
        return ApiError::new(
            HttpCode::UnsupportedMediaType,
            "request bodies must be JSON (`Content-Type: application/json`), or JSON Lines for /v1/import",
        )
        .into_response();
    }
    let mut resp = next.run(req).await;
    if let Some(allowed) = cross {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listen: &str, origins: &[&str], hosts: &[&str]) -> GuardConfig {
        GuardConfig {
            listen: Some(listen.parse().unwrap()),
            cors_origins: origins.iter().map(|s| s.to_string()).collect(),
            allowed_hosts: hosts.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn hosts() {
        let local = config("127.0.0.1:8420", &[], &[]);
        assert!(local.checks_host());
        for ok in [
            "localhost",
            "127.0.0.1",
            "[::1]",
            "LOCALHOST",
            "app.localhost",
        ] {
            assert!(local.host_allowed(ok), "{ok}");
        }
        assert!(!local.host_allowed("evil.example"));
        assert_eq!(host_name("[::1]:8420"), "[::1]");
        assert_eq!(host_name("localhost:8420"), "localhost");
        assert_eq!(host_name("evil.example"), "evil.example");
        let public = config("0.0.0.0:8420", &[], &[]);
        assert!(
            !public.checks_host(),
            "a public listener serves any name unless told"
        );
        let named = config("0.0.0.0:8420", &[], &["memory.example"]);
        assert!(named.checks_host());
        assert!(named.host_allowed("memory.example"));
        assert!(!named.host_allowed("evil.example"));
    }

    #[test]
    fn origins() {
        let c = config("127.0.0.1:8420", &["https://app.example"], &[]);
        assert!(c.origin_allowed("http://127.0.0.1:8420", Some("127.0.0.1:8420")));
        assert!(c.origin_allowed("https://app.example", Some("127.0.0.1:8420")));
        assert!(!c.origin_allowed("http://evil.example", Some("127.0.0.1:8420")));
        assert!(!c.origin_allowed("null", Some("127.0.0.1:8420")));
        // Another local port is another origin.
        assert!(!c.origin_allowed("http://localhost:6274", Some("127.0.0.1:8420")));
    }
}
