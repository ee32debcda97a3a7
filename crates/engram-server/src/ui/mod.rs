//! The web dashboard under `/ui`, and the API reference at `/docs`.
//!
//! Server-rendered HTML (maud templates compiled into the binary), every
//! asset embedded, no script but our own small `ui.js` (and, on `/docs`
//! only, the vendored Swagger UI). Pages and actions run as the signed-in
//! key's principal through the same service calls as the REST API: what a
//! key may see and change is decided by the service, never here.
//!
//! Security, outside in: the guard (`crate::guard`) checks `Host` and
//! `Origin` as for every route and lets only `/ui` POSTs carry a form body;
//! [`csrf`] refuses any POST whose form lacks the session's CSRF token (the
//! sign-in form: a double-submit cookie); [`Ui`] resolves the session to a
//! principal, re-authenticating its key on every request, and charges the
//! key's rate limit. Every response carries a strict Content-Security-Policy.

mod admin;
mod assets;
mod jobs;
mod layout;
mod memories;
mod overview;
mod scopes;
mod search;
pub mod session;

use axum::Router;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use engram_core::access::{Principal, Role};
use engram_core::ctx::RequestCtx;
use engram_core::memory::{Scope, ScopeField};
use engram_core::{Error, ErrorCode};
use serde::Deserialize;

use crate::AppState;
use crate::auth::AuthMode;
use crate::error::{HttpCode, status_of};
pub use session::{SessionConfig, Sessions};

/// The session cookie.
const SESSION_COOKIE: &str = "engram_session";
/// The sign-in form's double-submit cookie.
const LOGIN_COOKIE: &str = "engram_login";
/// The largest dashboard form (the longest is a memory's text).
const MAX_FORM_BYTES: usize = 1024 * 1024;

/// Whether `path` is the dashboard's (or the API reference's): they
/// authenticate by session, not by bearer key.
pub fn handles(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/") || path == "/docs" || path.starts_with("/docs/")
}

/// The dashboard's routes.
pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/ui", get(overview::page))
        .route("/ui/", get(|| async { Redirect::to("/ui") }))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/scopes", get(scopes::page))
        .route("/ui/scopes/erase", post(scopes::erase))
        .route("/ui/memories", get(memories::list))
        .route("/ui/memories/{id}", get(memories::detail))
        .route("/ui/memories/{id}/edit", post(memories::edit))
        .route("/ui/memories/{id}/delete", post(memories::delete))
        .route("/ui/memories/{id}/revert", post(memories::revert))
        .route("/ui/search", get(search::page))
        .route("/ui/jobs", get(jobs::list))
        .route("/ui/jobs/{id}", get(jobs::detail))
        .route("/ui/jobs/{id}/retry", post(jobs::retry))
        .route("/ui/audit", get(admin::audit))
        .route("/ui/audit/export", get(admin::audit_export))
        .route("/ui/keys", get(admin::keys).post(admin::create_key))
        .route("/ui/keys/{id}/revoke", post(admin::revoke_key))
        .route("/ui/assets/{file}", get(assets::ui_asset))
        .route("/ui/{*rest}", get(not_found).post(not_found))
        .route("/docs", get(assets::docs_page))
        .route("/docs/{file}", get(assets::docs_asset))
        .route_layer(axum::middleware::from_fn_with_state(state, csrf))
        .layer(axum::middleware::from_fn(headers))
}

async fn not_found() -> PageError {
    PageError::new(
        StatusCode::NOT_FOUND,
        "Page not found",
        "There is no dashboard page here. Use the menu to find your way.",
    )
}

/// The security headers of every dashboard and reference response.
async fn headers(req: Request, next: Next) -> Response {
    let docs = req.uri().path().starts_with("/docs");
    let asset =
        req.uri().path().starts_with("/ui/assets/") || req.uri().path().starts_with("/docs/");
    let started = std::time::Instant::now();
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    // How long the server took (shown in the browser's network panel; `engram bench` reads it).
    let took = format!("app;dur={:.2}", started.elapsed().as_secs_f64() * 1000.0);
    if let Ok(v) = HeaderValue::from_str(&took) {
        h.insert("server-timing", v);
    }
    // Swagger UI sets element styles from script; nothing else needs more than 'self'.
    let style = if docs {
        "'self' 'unsafe-inline'"
    } else {
        "'self'"
    };
    let csp = format!(
        "default-src 'none'; script-src 'self'; style-src {style}; img-src 'self' data:; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !asset {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// A page that explains what went wrong; never a stack trace.
#[derive(Debug)]
pub struct PageError {
    status: StatusCode,
    title: String,
    detail: String,
}

impl PageError {
    pub fn new(status: StatusCode, title: &str, detail: impl Into<String>) -> PageError {
        PageError {
            status,
            title: title.to_owned(),
            detail: detail.into(),
        }
    }
}

impl From<Error> for PageError {
    fn from(e: Error) -> PageError {
        let status = status_of(HttpCode::Core(e.code));
        let detail = if status.is_server_error() {
            tracing::error!(error = %e, "dashboard: internal error");
            "Something went wrong on the server; its log has the details.".to_owned()
        } else {
            e.message
        };
        let title = match e.code {
            ErrorCode::NotFound => "Not found",
            ErrorCode::Forbidden => "Not allowed",
            ErrorCode::InvalidFilter | ErrorCode::InvalidRequest | ErrorCode::MissingScope => {
                "That request is not valid"
            }
            ErrorCode::Conflict => "That changed meanwhile",
            _ if status.is_server_error() => "Server error",
            _ => "That did not work",
        };
        PageError {
            status,
            title: title.to_owned(),
            detail,
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let body = layout::bare(
            &self.title,
            maud::html! {
                main.narrow {
                    h1 { (self.title) }
                    p.error role="alert" { (self.detail) }
                    p { "Nothing was changed. " a href="/ui" { "Back to the dashboard" } }
                }
            },
        );
        (self.status, body).into_response()
    }
}

pub type PageResult = Result<Response, PageError>;

/// The signed-in caller of a dashboard page.
pub struct Ui {
    pub ctx: RequestCtx,
    /// The session's CSRF token, for the forms a page renders.
    pub csrf: String,
    /// `local operator` or `key <id> (role, binding)`.
    pub who: String,
}

impl Ui {
    pub fn principal(&self) -> &Principal {
        &self.ctx.principal
    }

    pub fn is_admin(&self) -> bool {
        self.principal().role >= Role::Admin
    }

    pub fn can_write(&self) -> bool {
        self.principal().role >= Role::ReadWrite
    }
}

/// The value of cookie `name`, when the browser sent exactly one. Two
/// means another site on the same host (another port, a sibling subdomain)
/// planted one beside ours: neither is trusted.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut found = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v);
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// `Secure` when the browser reached us over TLS (directly or through a proxy that says so).
fn secure(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

fn set_cookie(resp: &mut Response, name: &str, value: &str, max_age: Option<u64>, secure: bool) {
    let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    if secure {
        c.push_str("; Secure");
    }
    if let Ok(v) = HeaderValue::from_str(&c) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// Where to go after signing in: a dashboard path only (never another site).
fn local_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if (n == "/ui" || n.starts_with("/ui/") || n.starts_with("/ui?"))
                && !n.contains('\\') =>
        {
            n.to_owned()
        }
        _ => "/ui".to_owned(),
    }
}

fn to_login(parts: &Parts, why: Option<&str>) -> Response {
    let next = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/ui");
    let mut url = format!("/ui/login?next={}", urlencode(next));
    if let Some(why) = why {
        url.push_str(&format!("&why={why}"));
    }
    Redirect::to(&url).into_response()
}

/// Percent-encodes a query value.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl FromRequestParts<AppState> for Ui {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(to_login(parts, None));
        };
        let Some(session) = app.sessions.get(token) else {
            return Err(to_login(parts, Some("expired")));
        };
        let principal = match (&session.key, &app.config.auth) {
            (Some(key), _) => match app.keys.authenticate(key).await {
                Ok(p) => p,
                Err(e) if e.code == ErrorCode::Unauthorized => {
                    app.sessions.close(token);
                    return Err(to_login(parts, Some("revoked")));
                }
                Err(e) => return Err(PageError::from(e).into_response()),
            },
            (None, AuthMode::InsecureNoAuth) => Principal::operator(),
            (None, AuthMode::Keys) => {
                app.sessions.close(token);
                return Err(to_login(parts, None));
            }
        };
        if let Some(wait) = app.limits.retry_after(&principal) {
            return Err(PageError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "Slow down",
                format!(
                    "This key's rate limit is reached; try again in {}s.",
                    wait.as_secs().max(1)
                ),
            )
            .into_response());
        }
        let who = match &principal.key_id {
            None => "local operator".to_owned(),
            Some(id) => {
                let binding: Vec<String> = principal
                    .binding
                    .iter()
                    .map(|(f, v)| format!("{}={v}", f.as_str()))
                    .collect();
                format!("key {id} · {} · {}", principal.role, binding.join(" "))
            }
        };
        let request_id = parts
            .headers
            .get(crate::request_id::HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(Ui {
            ctx: RequestCtx::new(principal, "ui", request_id),
            csrf: session.csrf,
            who,
        })
    }
}

/// Refuses a POST whose form does not carry the right CSRF token, before
/// any handler runs. Nothing is changed; the page says why.
async fn csrf(State(app): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, app.config.max_body_bytes).await else {
        return PageError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Too large",
            "That form was larger than the server accepts.",
        )
        .into_response();
    };
    let sent: Option<String> = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes)
        .ok()
        .and_then(|fields| {
            fields
                .into_iter()
                .find(|(k, _)| k == "csrf")
                .map(|(_, v)| v)
        });
    let live = cookie(&parts.headers, SESSION_COOKIE).and_then(|t| app.sessions.get(t));
    if parts.uri.path() == "/ui/logout" && live.is_none() {
        // The session already ended: signing out changes nothing, so it needs no token.
        return next
            .run(Request::from_parts(parts, axum::body::Body::from(bytes)))
            .await;
    }
    let expected = if parts.uri.path() == "/ui/login" {
        cookie(&parts.headers, LOGIN_COOKIE).map(str::to_owned)
    } else {
        live.map(|s| s.csrf)
    };
    let ok = matches!((&sent, &expected), (Some(s), Some(e)) if session::same_secret(s, e));
    if !ok {
        metrics::counter!("engram_ui_csrf_refused_total").increment(1);
        return PageError::new(
            StatusCode::FORBIDDEN,
            "This form cannot be accepted",
            "It did not carry this session's security token: it may be from an expired session, \
             another tab after signing out, or another site. Reload the page and try again.",
        )
        .into_response();
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

#[derive(Deserialize)]
struct LoginQuery {
    next: Option<String>,
    why: Option<String>,
}

async fn login_page(
    State(app): State<AppState>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<LoginQuery>,
) -> Response {
    let next = local_next(q.next.as_deref());
    if matches!(app.config.auth, AuthMode::InsecureNoAuth) {
        // No sign-in: the local operator gets a session (for its CSRF token).
        let token = app.sessions.open(None);
        let mut resp = Redirect::to(&next).into_response();
        set_cookie(&mut resp, SESSION_COOKIE, &token, None, secure(&headers));
        return resp;
    }
    let why = match q.why.as_deref() {
        Some("expired") => Some("Your session ended. Sign in again."),
        Some("revoked") => {
            Some("The key of your session is no longer valid. Sign in with another.")
        }
        Some("invalid") => Some("That key was not accepted."),
        Some("signed_out") => Some("You are signed out."),
        _ => None,
    };
    login_form(&next, why, StatusCode::OK, secure(&headers))
}

fn login_form(next: &str, why: Option<&str>, status: StatusCode, secure_cookie: bool) -> Response {
    let csrf = session::random_token();
    let body = layout::bare(
        "Sign in",
        maud::html! {
            main.narrow {
                h1 { "Engram" }
                p { "Sign in with an API key. Everything you see and change is what that key may see and change." }
                @if let Some(why) = why { p.error role="alert" { (why) } }
                form method="post" action="/ui/login" {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="next" value=(next);
                    label for="api_key" { "API key" }
                    input #api_key type="password" name="api_key" autocomplete="current-password" required autofocus;
                    button type="submit" { "Sign in" }
                }
                p.muted { "Create a key with " code { "engram keys create" } "." }
            }
        },
    );
    let mut resp = (status, body).into_response();
    set_cookie(&mut resp, LOGIN_COOKIE, &csrf, Some(3600), secure_cookie);
    resp
}

#[derive(Deserialize)]
struct LoginForm {
    api_key: String,
    next: Option<String>,
}

async fn login(
    State(app): State<AppState>,
    headers: HeaderMap,
    axum::extract::Form(form): axum::extract::Form<LoginForm>,
) -> Response {
    let next = local_next(form.next.as_deref());
    let key = form.api_key.trim();
    match app.keys.authenticate(key).await {
        Ok(_) => {
            let token = app.sessions.open(Some(key.to_owned()));
            let mut resp = Redirect::to(&next).into_response();
            set_cookie(&mut resp, SESSION_COOKIE, &token, None, secure(&headers));
            set_cookie(&mut resp, LOGIN_COOKIE, "", Some(0), secure(&headers));
            resp
        }
        Err(e) if e.code == ErrorCode::Unauthorized => {
            metrics::counter!("engram_auth_failures_total", "reason" => "ui").increment(1);
            login_form(
                &next,
                Some("That key was not accepted."),
                StatusCode::UNAUTHORIZED,
                secure(&headers),
            )
        }
        Err(e) => PageError::from(e).into_response(),
    }
}

async fn logout(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(token) = cookie(&headers, SESSION_COOKIE) {
        app.sessions.close(token);
    }
    let mut resp = Redirect::to("/ui/login?why=signed_out").into_response();
    set_cookie(&mut resp, SESSION_COOKIE, "", Some(0), secure(&headers));
    resp
}

/// The scope ids of a page's query string (deep links: `?user_id=…`).
#[derive(Debug, Default, Clone, Deserialize)]
pub struct ScopeQuery {
    #[serde(default, deserialize_with = "layout::empty_as_none")]
    pub org_id: Option<String>,
    #[serde(default, deserialize_with = "layout::empty_as_none")]
    pub app_id: Option<String>,
    #[serde(default, deserialize_with = "layout::empty_as_none")]
    pub user_id: Option<String>,
    #[serde(default, deserialize_with = "layout::empty_as_none")]
    pub agent_id: Option<String>,
    #[serde(default, deserialize_with = "layout::empty_as_none")]
    pub run_id: Option<String>,
}

impl ScopeQuery {
    pub fn scope(&self) -> Scope {
        Scope {
            org_id: self.org_id.clone(),
            app_id: self.app_id.clone(),
            user_id: self.user_id.clone(),
            agent_id: self.agent_id.clone(),
            run_id: self.run_id.clone(),
        }
    }

    /// `user_id=alice&agent_id=…`, for links.
    pub fn query(&self) -> String {
        self.scope()
            .iter()
            .map(|(f, v)| format!("{}={}", f.as_str(), urlencode(v)))
            .collect::<Vec<_>>()
            .join("&")
    }

    pub fn get(&self, f: ScopeField) -> Option<&str> {
        match f {
            ScopeField::Org => self.org_id.as_deref(),
            ScopeField::App => self.app_id.as_deref(),
            ScopeField::User => self.user_id.as_deref(),
            ScopeField::Agent => self.agent_id.as_deref(),
            ScopeField::Run => self.run_id.as_deref(),
        }
    }
}

/// Reads a page's query string, or explains why it cannot.
pub struct PageQuery<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for PageQuery<T> {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str(q).map(PageQuery).map_err(|e| {
            PageError::new(
                StatusCode::BAD_REQUEST,
                "That address is not valid",
                format!("Its query string could not be read: {e}."),
            )
        })
    }
}

/// Reads a POSTed form, or explains why it cannot.
pub struct PageForm<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for PageForm<T> {
    type Rejection = PageError;

    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        // The CSRF middleware has read (and bounded) the body already.
        let bytes = axum::body::to_bytes(req.into_body(), MAX_FORM_BYTES)
            .await
            .map_err(|_| {
                PageError::new(
                    StatusCode::BAD_REQUEST,
                    "Unreadable form",
                    "The form could not be read.",
                )
            })?;
        serde_urlencoded::from_bytes(&bytes)
            .map(PageForm)
            .map_err(|e| {
                PageError::new(
                    StatusCode::BAD_REQUEST,
                    "That form is not valid",
                    format!("It could not be read: {e}."),
                )
            })
    }
}

/// A memory, job or key id from the path, or a clear 404 page.
pub fn parse_uuid(raw: &str, what: &str) -> Result<uuid::Uuid, PageError> {
    raw.parse().map_err(|_| {
        PageError::new(
            StatusCode::NOT_FOUND,
            "Not found",
            format!("`{raw}` is not a {what} id."),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_the_dashboard() {
        assert_eq!(
            local_next(Some("/ui/memories?user_id=a")),
            "/ui/memories?user_id=a"
        );
        assert_eq!(local_next(Some("/ui")), "/ui");
        for bad in [
            "https://evil.example",
            "//evil.example",
            "/uix",
            "/ui\\..",
            "/v1/memories",
        ] {
            assert_eq!(local_next(Some(bad)), "/ui", "{bad}");
        }
        assert_eq!(local_next(None), "/ui");
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; engram_session=abc; b=2"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, LOGIN_COOKIE), None);
        assert_eq!(urlencode("a b&c/é"), "a%20b%26c%2F%C3%A9");
    }
}
