//! The dashboard (`/ui`) over real HTTP routing and a real store: sign-in
//! and sessions, CSRF and Origin, a bound key's reach (by URL and by form),
//! every page empty and populated, and bad input answered with a readable
//! page that changes nothing. SQLite, and Postgres with
//! `ENGRAM_TEST_STORE=postgres`. The browser suite (`tests/ui/`) drives the
//! same pages in Chromium.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use engram_core::access::{Principal, Role};
use engram_core::clock::SystemClock;
use engram_core::ctx::RequestCtx;
use engram_core::memory::Scope;
use engram_core::service::{AddInput, Content, KeyService, MemoryService, NewKey};
use engram_server::auth::AuthMode;
use engram_server::{AppState, ServerConfig, app};
use http_body_util::BodyExt;
use tower::ServiceExt;

mod common;

struct World {
    router: Router,
    memory: MemoryService,
    keys: KeyService,
    state: AppState,
    _dir: tempfile::TempDir,
}

async fn world(config: ServerConfig) -> World {
    let dir = tempfile::tempdir().unwrap();
    let (store, memory) = common::open(dir.path()).await;
    let keys = KeyService::new(store.keys(), Arc::new(SystemClock));
    let state = AppState::new(memory.clone(), keys.clone(), config);
    World {
        router: app(state.clone()),
        memory,
        keys,
        state,
        _dir: dir,
    }
}

fn no_workers() -> ServerConfig {
    ServerConfig {
        workers: 0,
        ..ServerConfig::default()
    }
}

fn user(org: &str, user: &str) -> Scope {
    Scope {
        org_id: Some(org.into()),
        user_id: Some(user.into()),
        ..Default::default()
    }
}

impl World {
    async fn key(&self, binding: Scope, role: Role) -> String {
        let new = NewKey {
            name: "dash".into(),
            role: Some(role),
            binding,
            rate_limit: None,
        };
        self.keys
            .create(&Principal::operator(), new)
            .await
            .unwrap()
            .1
    }

    async fn remember(&self, text: &str, scope: Scope) -> String {
        let r = self
            .memory
            .add(
                &RequestCtx::operator("test"),
                AddInput::new(Content::Text(text.into()), scope),
            )
            .await
            .unwrap();
        r[0].id.to_string()
    }

    async fn text_of(&self, id: &str) -> (String, u32) {
        let m = self
            .memory
            .get(&RequestCtx::operator("test"), id.parse().unwrap())
            .await
            .unwrap();
        (m.text, m.version)
    }

    fn browser(&self) -> Browser {
        Browser {
            router: self.router.clone(),
            jar: HashMap::new(),
            origin: None,
        }
    }
}

/// A cookie-keeping client that does not follow redirects.
struct Browser {
    router: Router,
    jar: HashMap<String, String>,
    origin: Option<String>,
}

struct Page {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The value of the first `name="csrf"` input.
    fn csrf(&self) -> String {
        let at = self
            .body
            .find(r#"name="csrf" value=""#)
            .expect("a CSRF field")
            + 19;
        self.body[at..].split('"').next().unwrap().to_owned()
    }
}

impl Browser {
    async fn send(&mut self, req: Request<Body>) -> Page {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        for c in headers.get_all(header::SET_COOKIE) {
            let c = c.to_str().unwrap();
            let (pair, _) = c.split_once(';').unwrap_or((c, ""));
            let (k, v) = pair.split_once('=').unwrap();
            if v.is_empty() {
                self.jar.remove(k);
            } else {
                self.jar.insert(k.to_owned(), v.to_owned());
            }
        }
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Page {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    fn request(&self, method: &str, path: &str) -> axum::http::request::Builder {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "127.0.0.1:8420");
        if !self.jar.is_empty() {
            let cookies: Vec<String> = self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
            b = b.header(header::COOKIE, cookies.join("; "));
        }
        if let Some(o) = &self.origin {
            b = b.header(header::ORIGIN, o);
        }
        b
    }

    async fn get(&mut self, path: &str) -> Page {
        let req = self.request("GET", path).body(Body::empty()).unwrap();
        self.send(req).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let body = serde_urlencoded::to_string(form).unwrap();
        let req = self
            .request("POST", path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap();
        self.send(req).await
    }

    async fn sign_in(&mut self, key: &str) {
        let form = self.get("/ui/login").await;
        let csrf = form.csrf();
        let done = self
            .post(
                "/ui/login",
                &[("csrf", &csrf), ("api_key", key), ("next", "/ui")],
            )
            .await;
        assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    }
}

#[tokio::test]
async fn sign_in_opens_a_strict_session_and_sign_out_ends_it() {
    let w = world(no_workers()).await;
    let key = w.key(user("acme", "alice"), Role::ReadWrite).await;
    let mut b = w.browser();

    let first = b.get("/ui/memories?user_id=alice").await;
    assert_eq!(first.status, StatusCode::SEE_OTHER);
    assert_eq!(
        first.location(),
        "/ui/login?next=%2Fui%2Fmemories%3Fuser_id%3Dalice"
    );
    assert_eq!(
        b.get("/").await.status,
        StatusCode::UNAUTHORIZED,
        "the API root is unchanged"
    );

    let form = b.get("/ui/login").await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(form.body.contains(r#"name="api_key""#));
    let csp = form.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(!form.body.contains("<script>"), "no inline script");
    let csrf = form.csrf();

    // A wrong key: a readable refusal, no session.
    let wrong = b
        .post("/ui/login", &[("csrf", &csrf), ("api_key", "ek_nope")])
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.body.contains("not accepted"));
    assert!(!b.jar.contains_key("engram_session"));
    // A right key without the sign-in form's token (login CSRF): refused.
    let csrf = b.get("/ui/login").await.csrf();
    let forged = b
        .post("/ui/login", &[("csrf", "forged"), ("api_key", &key)])
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert!(!b.jar.contains_key("engram_session"));

    let ok = b
        .post(
            "/ui/login",
            &[
                ("csrf", &csrf),
                ("api_key", &key),
                ("next", "/ui/memories?user_id=alice"),
            ],
        )
        .await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER);
    assert_eq!(
        ok.location(),
        "/ui/memories?user_id=alice",
        "back where the link pointed"
    );
    let cookie = ok
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("engram_session="))
        .unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains("Secure"), "plain HTTP on localhost");
    assert!(!cookie.contains(&key), "the cookie is not the key");

    let page = b.get("/ui/memories?user_id=alice").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("key "), "says who is signed in");
    assert_eq!(page.headers[header::CACHE_CONTROL], "no-store");

    // Signing out needs the session's token too, then the session is gone.
    assert_eq!(
        b.post("/ui/logout", &[]).await.status,
        StatusCode::FORBIDDEN
    );
    let token = page.csrf();
    let out = b.post("/ui/logout", &[("csrf", &token)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(b.get("/ui").await.status, StatusCode::SEE_OTHER);

    // Over TLS (as a proxy reports it) the cookie is Secure.
    let mut tls = w.browser();
    let csrf = tls.get("/ui/login").await.csrf();
    let req = tls
        .request("POST", "/ui/login")
        .header("x-forwarded-proto", "https")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(
            serde_urlencoded::to_string([("csrf", &csrf), ("api_key", &key)]).unwrap(),
        ))
        .unwrap();
    let secure = tls.send(req).await;
    assert!(
        secure
            .headers
            .get_all(header::SET_COOKIE)
            .iter()
            .any(|c| c.to_str().unwrap().contains("; Secure")),
    );
}

#[tokio::test]
async fn a_revoked_key_or_an_idle_session_signs_out() {
    let mut config = no_workers();
    config.ui_sessions.idle = Duration::from_millis(800);
    let w = world(config).await;
    let admin = w
        .key(
            Scope {
                org_id: Some("acme".into()),
                ..Default::default()
            },
            Role::Admin,
        )
        .await;
    let mut b = w.browser();
    b.sign_in(&admin).await;
    assert_eq!(b.get("/ui").await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let expired = b.get("/ui/scopes").await;
    assert_eq!(expired.status, StatusCode::SEE_OTHER);
    assert!(
        expired.location().contains("why=expired"),
        "{}",
        expired.location()
    );
    let login = b.get(expired.location()).await;
    assert!(login.body.contains("session ended"));
    // Signing out of an ended session needs no token: it lands on the sign-in page.
    let out = b.post("/ui/logout", &[]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(out.location().contains("signed_out"));

    let key = w.key(user("acme", "alice"), Role::ReadWrite).await;
    let mut b = w.browser();
    b.sign_in(&key).await;
    let listed = w.keys.list(&Principal::operator()).await.unwrap();
    let alice_key = listed
        .iter()
        .find(|k| k.binding.user_id.as_deref() == Some("alice"))
        .unwrap();
    w.keys
        .revoke(&Principal::operator(), &alice_key.id)
        .await
        .unwrap();
    w.keys.forget_verified();
    let revoked = b.get("/ui").await;
    assert_eq!(revoked.status, StatusCode::SEE_OTHER);
    assert!(revoked.location().contains("why=revoked"));
}

#[tokio::test]
async fn forms_without_the_session_token_or_from_another_origin_change_nothing() {
    let w = world(no_workers()).await;
    let id = w
        .remember("My birthday is on July 11.", user("acme", "alice"))
        .await;
    let key = w.key(user("acme", "alice"), Role::ReadWrite).await;
    let mut b = w.browser();
    b.sign_in(&key).await;
    let page = b.get(&format!("/ui/memories/{id}")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let csrf = page.csrf();
    let edit = format!("/ui/memories/{id}/edit");

    let none = b.post(&edit, &[("text", "hacked"), ("version", "1")]).await;
    assert_eq!(none.status, StatusCode::FORBIDDEN);
    assert!(
        none.body.contains("security token"),
        "a readable page: {}",
        none.body
    );
    let forged = b
        .post(
            &edit,
            &[("csrf", "00ff"), ("text", "hacked"), ("version", "1")],
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    // Another session's token is not this one's.
    let mut other = w.browser();
    other.sign_in(&key).await;
    let theirs = other.get("/ui").await.csrf();
    assert_ne!(theirs, csrf);
    assert_eq!(
        b.post(
            &edit,
            &[("csrf", &theirs), ("text", "hacked"), ("version", "1")]
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    // The right token from a foreign page: the guard refuses it.
    b.origin = Some("http://evil.example".into());
    let foreign = b
        .post(
            &edit,
            &[("csrf", &csrf), ("text", "hacked"), ("version", "1")],
        )
        .await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN);
    b.origin = None;
    // A form body anywhere but the dashboard is still refused.
    let req = b
        .request("POST", "/v1/memories")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::AUTHORIZATION, format!("Bearer {key}"))
        .body(Body::from("text=x&user_id=alice"))
        .unwrap();
    assert_eq!(b.send(req).await.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        w.text_of(&id).await,
        ("My birthday is on July 11.".into(), 1)
    );

    // The same origin with the token: the edit lands as version 2, and reverts.
    b.origin = Some("http://127.0.0.1:8420".into());
    let ok = b
        .post(
            &edit,
            &[
                ("csrf", &csrf),
                ("text", "My birthday is on July 12."),
                ("version", "1"),
            ],
        )
        .await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER, "{}", ok.body);
    assert_eq!(
        w.text_of(&id).await,
        ("My birthday is on July 12.".into(), 2)
    );
    let timeline = b.get(&format!("/ui/memories/{id}")).await;
    assert!(timeline.body.contains("UPDATE") && timeline.body.contains("July 11"));
    // A stale form (rendered for version 1) does not overwrite version 2.
    let stale = b
        .post(
            &edit,
            &[("csrf", &csrf), ("text", "stale"), ("version", "1")],
        )
        .await;
    assert_eq!(stale.status, StatusCode::CONFLICT);
    let revert = b
        .post(
            &format!("/ui/memories/{id}/revert"),
            &[("csrf", &csrf), ("version", "1")],
        )
        .await;
    assert_eq!(revert.status, StatusCode::SEE_OTHER);
    assert_eq!(
        w.text_of(&id).await,
        ("My birthday is on July 11.".into(), 3)
    );
}

#[tokio::test]
async fn a_user_bound_key_reaches_only_its_user_by_url_and_by_form() {
    let w = world(no_workers()).await;
    let _mine = w
        .remember("Alice likes green tea.", user("acme", "alice"))
        .await;
    let bobs = w
        .remember("Bob's door code is 4711.", user("acme", "bob"))
        .await;
    let key = w.key(user("acme", "alice"), Role::ReadWrite).await;
    let mut b = w.browser();
    b.sign_in(&key).await;
    let csrf = b.get("/ui").await.csrf();

    let scopes = b.get("/ui/scopes").await;
    assert!(
        scopes.body.contains("alice") && !scopes.body.contains("bob"),
        "{}",
        scopes.body
    );
    let list = b.get("/ui/memories").await;
    assert!(list.body.contains("green tea") && !list.body.contains("4711"));
    let other = b.get("/ui/memories?user_id=bob").await;
    assert_eq!(other.status, StatusCode::FORBIDDEN, "{}", other.body);
    assert!(!other.body.contains("4711"));
    let direct = b.get(&format!("/ui/memories/{bobs}")).await;
    assert_eq!(direct.status, StatusCode::NOT_FOUND);
    assert!(!direct.body.contains("4711"));
    let search = b.get("/ui/search?q=door+code&user_id=bob").await;
    assert_eq!(search.status, StatusCode::FORBIDDEN);
    let mine = b.get("/ui/search?q=door+code").await;
    assert_eq!(mine.status, StatusCode::OK);
    assert!(!mine.body.contains("4711"), "search stays in the binding");

    for (path, form) in [
        (
            format!("/ui/memories/{bobs}/edit"),
            vec![("csrf", csrf.as_str()), ("text", "x")],
        ),
        (
            format!("/ui/memories/{bobs}/delete"),
            vec![("csrf", csrf.as_str())],
        ),
        (
            format!("/ui/memories/{bobs}/revert"),
            vec![("csrf", csrf.as_str()), ("version", "1")],
        ),
    ] {
        let r = b.post(&path, &form).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.body);
    }
    let erase = b
        .post(
            "/ui/scopes/erase",
            &[
                ("csrf", &csrf),
                ("field", "user_id"),
                ("id", "bob"),
                ("confirm", "bob"),
            ],
        )
        .await;
    assert_eq!(erase.status, StatusCode::FORBIDDEN, "{}", erase.body);
    assert_eq!(w.text_of(&bobs).await.0, "Bob's door code is 4711.");

    // Admin pages are refused with a page that says so.
    for path in ["/ui/audit", "/ui/keys", "/ui/audit/export"] {
        let r = b.get(path).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
    }
    let create = b
        .post(
            "/ui/keys",
            &[("csrf", &csrf), ("name", "x"), ("role", "admin")],
        )
        .await;
    assert_eq!(create.status, StatusCode::FORBIDDEN);
    assert!(
        !b.get("/ui").await.body.contains("/ui/keys"),
        "no admin menu entries"
    );
}

#[tokio::test]
async fn every_page_renders_empty_and_populated() {
    let w = world(no_workers()).await;
    let admin = w
        .key(
            Scope {
                org_id: Some("acme".into()),
                ..Default::default()
            },
            Role::Admin,
        )
        .await;
    let mut b = w.browser();
    b.sign_in(&admin).await;
    let pages = [
        "/ui",
        "/ui/scopes",
        "/ui/scopes?field=user_id",
        "/ui/memories",
        "/ui/memories?user_id=alice",
        "/ui/search",
        "/ui/search?q=tea&user_id=alice",
        "/ui/jobs",
        "/ui/jobs?state=dead",
        "/ui/audit",
        "/ui/keys",
        "/docs",
    ];
    for path in pages {
        let p = b.get(path).await;
        assert_eq!(p.status, StatusCode::OK, "empty store, {path}: {}", p.body);
    }

    let id = w
        .remember("Alice likes green tea.", user("acme", "alice"))
        .await;
    w.remember("Alice moved to Lisbon in May 2024.", user("acme", "alice"))
        .await;
    // A dead job: queued, then failed for good.
    let ctx = RequestCtx::operator("test");
    let job = w
        .state
        .jobs
        .enqueue_add(
            &ctx,
            AddInput::new(Content::Text("queued".into()), user("acme", "alice")),
            false,
        )
        .await
        .unwrap();
    let store = w.memory.store();
    let now = w.memory.now();
    let claimed = store
        .job_claim("w1", now, Duration::from_secs(60), true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, job.id);
    assert!(
        store
            .job_fail(job.id, "w1", "LLM unavailable: boom", None, now)
            .await
            .unwrap()
    );
    // An audit event from an edit through the dashboard.
    let csrf = b.get(&format!("/ui/memories/{id}")).await.csrf();
    let edit = b
        .post(
            &format!("/ui/memories/{id}/edit"),
            &[
                ("csrf", &csrf),
                ("text", "Alice likes oolong tea."),
                ("version", "1"),
            ],
        )
        .await;
    assert_eq!(edit.status, StatusCode::SEE_OTHER, "{}", edit.body);

    let expect: &[(&str, &str)] = &[
        ("/ui", "semantic"),
        ("/ui/scopes", "alice"),
        ("/ui/memories?user_id=alice", "oolong"),
        (
            "/ui/memories?user_id=alice&kind=semantic&contains=lisbon",
            "Lisbon",
        ),
        (
            "/ui/memories?user_id=alice&created_from=2000-01-01&meta_key=city",
            "No memories match",
        ),
        (
            "/ui/search?q=what+tea+does+alice+like&user_id=alice&top_k=3&token_budget=500",
            "semantic",
        ),
        ("/ui/jobs", "dead"),
        ("/ui/jobs?state=dead", "boom"),
        ("/ui/audit", "memory.update"),
        ("/ui/audit?action=memory.update", "memory.update"),
        ("/ui/keys", "admin"),
    ];
    for (path, needle) in expect {
        let p = b.get(path).await;
        assert_eq!(p.status, StatusCode::OK, "{path}: {}", p.body);
        assert!(p.body.contains(needle), "{path} shows {needle}: {}", p.body);
    }
    let overview = b.get("/ui").await.body;
    assert!(
        !overview.contains("Last hour on this node") && !overview.contains("indexed vectors"),
        "an org admin sees its org's figures, not the node's"
    );
    let memory = b.get(&format!("/ui/memories/{id}?as_of=2000-01-01")).await;
    assert!(memory.body.contains("did not exist yet"), "{}", memory.body);
    let now_text = b
        .get(&format!("/ui/memories/{id}?as_of={}", w.memory.now()))
        .await;
    assert!(
        now_text.body.contains("version 2 said"),
        "{}",
        now_text.body
    );
    let export = b.get("/ui/audit/export?action=memory.update").await;
    assert_eq!(export.headers[header::CONTENT_TYPE], "application/x-ndjson");
    let line: serde_json::Value =
        serde_json::from_str(export.body.lines().next().unwrap()).unwrap();
    assert_eq!(line["action"], "memory.update");

    // Retry the dead job from its page.
    let jp = b.get(&format!("/ui/jobs/{}", job.id)).await;
    assert!(jp.body.contains("Retry this job"));
    let retried = b
        .post(
            &format!("/ui/jobs/{}/retry", job.id),
            &[("csrf", &jp.csrf())],
        )
        .await;
    assert_eq!(retried.status, StatusCode::SEE_OTHER, "{}", retried.body);
    assert_eq!(
        store.job_get(job.id).await.unwrap().unwrap().state,
        engram_core::ports::JobState::Queued
    );

    // Create a key (secret shown once), then revoke it.
    let kp = b.get("/ui/keys").await;
    let created = b
        .post(
            "/ui/keys",
            &[
                ("csrf", &kp.csrf()),
                ("name", "ci-bot"),
                ("role", "read_only"),
                ("user_id", "alice"),
            ],
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
    assert!(created.body.contains("shown only once"));
    let new = w.keys.list(&Principal::operator()).await.unwrap();
    let bot = new.iter().find(|k| k.name == "ci-bot").unwrap();
    assert_eq!(
        bot.binding.org_id.as_deref(),
        Some("acme"),
        "within the admin's binding"
    );
    let revoked = b
        .post(
            &format!("/ui/keys/{}/revoke", bot.id),
            &[("csrf", &kp.csrf())],
        )
        .await;
    assert_eq!(revoked.status, StatusCode::SEE_OTHER);
    assert!(
        w.keys
            .list(&Principal::operator())
            .await
            .unwrap()
            .iter()
            .any(|k| k.id == bot.id && k.revoked_at.is_some())
    );

    // Erase a scope behind its typed confirmation.
    let sp = b.get("/ui/scopes").await;
    let wrong = b
        .post(
            "/ui/scopes/erase",
            &[
                ("csrf", &sp.csrf()),
                ("field", "user_id"),
                ("id", "alice"),
                ("confirm", "alicee"),
            ],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        w.text_of(&id).await.0,
        "Alice likes oolong tea.",
        "nothing erased"
    );
    let receipt = b
        .post(
            "/ui/scopes/erase",
            &[
                ("csrf", &sp.csrf()),
                ("field", "user_id"),
                ("id", "alice"),
                ("confirm", "alice"),
            ],
        )
        .await;
    assert_eq!(receipt.status, StatusCode::OK, "{}", receipt.body);
    assert!(receipt.body.contains("receipt") && receipt.body.contains("versions"));
    let gone = b.get("/ui/memories?user_id=alice").await;
    assert!(gone.body.contains("No memories match"));
}

#[tokio::test]
async fn bad_input_gets_a_readable_page_and_changes_nothing() {
    let w = world(no_workers()).await;
    let id = w
        .remember("Alice likes green tea.", user("acme", "alice"))
        .await;
    let key = w
        .key(
            Scope {
                org_id: Some("acme".into()),
                ..Default::default()
            },
            Role::Admin,
        )
        .await;
    let mut b = w.browser();
    b.sign_in(&key).await;
    let cases = [
        (
            "/ui/memories/not-a-uuid",
            StatusCode::NOT_FOUND,
            "not a memory id",
        ),
        (
            "/ui/memories/01a23b77-31f3-741a-9c42-8d3a3e5d6ac3",
            StatusCode::NOT_FOUND,
            "Not found",
        ),
        (
            "/ui/memories?user_id=alice&created_from=yesterday",
            StatusCode::BAD_REQUEST,
            "created_at",
        ),
        (
            "/ui/memories?user_id=alice&kind=gossip",
            StatusCode::BAD_REQUEST,
            "gossip",
        ),
        (
            "/ui/memories?user_id=alice&cursor=garbage",
            StatusCode::BAD_REQUEST,
            "cursor",
        ),
        (
            "/ui/search?q=tea&user_id=alice&filters=%7Bnope",
            StatusCode::BAD_REQUEST,
            "not JSON",
        ),
        (
            "/ui/search?q=tea&user_id=alice&filters=%7B%22kind%22%3A%7B%22like%22%3A1%7D%7D",
            StatusCode::BAD_REQUEST,
            "like",
        ),
        (
            "/ui/search?q=tea&user_id=alice&top_k=many",
            StatusCode::BAD_REQUEST,
            "whole number",
        ),
        (
            "/ui/search?q=tea&user_id=alice&as_of=soon",
            StatusCode::BAD_REQUEST,
            "as_of",
        ),
        (
            &format!("/ui/memories/{id}?as_of=soon"),
            StatusCode::BAD_REQUEST,
            "as_of",
        ),
        ("/ui/jobs?state=sleeping", StatusCode::BAD_REQUEST, "queued"),
        ("/ui/jobs/12", StatusCode::NOT_FOUND, "not a job id"),
        (
            "/ui/scopes?field=planet_id",
            StatusCode::BAD_REQUEST,
            "planet_id",
        ),
        ("/ui/audit?since=never", StatusCode::BAD_REQUEST, "since"),
        ("/ui/nowhere", StatusCode::NOT_FOUND, "no dashboard page"),
    ];
    for (path, status, needle) in cases {
        let p = b.get(path).await;
        assert_eq!(p.status, status, "{path}: {}", p.body);
        assert!(
            p.headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "{path}"
        );
        assert!(p.body.contains(needle), "{path} says {needle}: {}", p.body);
        assert!(p.body.contains("Nothing was changed"), "{path}");
    }
    let csrf = b.get("/ui").await.csrf();
    for (path, form) in [
        (
            format!("/ui/memories/{id}/revert"),
            vec![("csrf", csrf.as_str()), ("version", "9")],
        ),
        (
            format!("/ui/memories/{id}/revert"),
            vec![("csrf", csrf.as_str()), ("version", "one")],
        ),
        (
            format!("/ui/memories/{id}/edit"),
            vec![("csrf", csrf.as_str()), ("text", "")],
        ),
        (
            "/ui/keys".to_owned(),
            vec![("csrf", csrf.as_str()), ("name", "k"), ("role", "overlord")],
        ),
        (
            "/ui/keys".to_owned(),
            vec![
                ("csrf", csrf.as_str()),
                ("name", "k"),
                ("role", "admin"),
                ("org_id", "other"),
            ],
        ),
        (
            "/ui/scopes/erase".to_owned(),
            vec![
                ("csrf", csrf.as_str()),
                ("field", "planet"),
                ("id", "x"),
                ("confirm", "x"),
            ],
        ),
    ] {
        let p = b.post(&path, &form).await;
        assert!(p.status.is_client_error(), "{path} {form:?}: {}", p.status);
        assert!(p.body.contains("Nothing was changed"), "{path}: {}", p.body);
    }
    assert_eq!(w.text_of(&id).await, ("Alice likes green tea.".into(), 1));
    assert_eq!(w.keys.list(&Principal::operator()).await.unwrap().len(), 1);
}

#[tokio::test]
async fn without_auth_the_operator_needs_no_sign_in_but_forms_still_need_the_token() {
    let w = world(ServerConfig {
        auth: AuthMode::InsecureNoAuth,
        ..no_workers()
    })
    .await;
    let id = w
        .remember("Alice likes green tea.", user("acme", "alice"))
        .await;
    let mut b = w.browser();
    let first = b.get("/ui/memories?user_id=alice").await;
    assert_eq!(first.status, StatusCode::SEE_OTHER);
    let login = b.get(first.location()).await;
    assert_eq!(login.status, StatusCode::SEE_OTHER, "no sign-in form");
    assert_eq!(login.location(), "/ui/memories?user_id=alice");
    let page = b.get("/ui/memories?user_id=alice").await;
    assert!(page.body.contains("local operator") && page.body.contains("green tea"));
    let overview = b.get("/ui").await.body;
    assert!(overview.contains("Last hour on this node") && overview.contains("indexed vectors"));
    let edit = format!("/ui/memories/{id}/edit");
    assert_eq!(
        b.post(&edit, &[("text", "x"), ("version", "1")])
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    b.origin = Some("http://localhost:6274".into());
    assert_eq!(
        b.post(
            &edit,
            &[("csrf", &page.csrf()), ("text", "x"), ("version", "1")]
        )
        .await
        .status,
        StatusCode::FORBIDDEN,
        "another local port is another origin"
    );
    assert_eq!(w.text_of(&id).await.1, 1);
    // A page elsewhere cannot make the browser sign in either: its Origin is refused.
    let mut evil = w.browser();
    evil.origin = Some("http://evil.example".into());
    assert_eq!(evil.get("/ui/login").await.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn assets_and_reference_are_embedded() {
    let w = world(no_workers()).await;
    let mut b = w.browser();
    for (path, ty) in [
        ("/ui/assets/ui.css", "text/css"),
        ("/ui/assets/ui.js", "text/javascript"),
        ("/docs/swagger-ui-bundle.js", "text/javascript"),
        ("/docs/swagger-ui.css", "text/css"),
        ("/docs", "text/html"),
    ] {
        let p = b.get(path).await;
        assert_eq!(p.status, StatusCode::OK, "{path}");
        assert!(
            p.headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with(ty),
            "{path}"
        );
        assert!(
            p.headers.contains_key(header::CONTENT_SECURITY_POLICY),
            "{path}"
        );
    }
    assert_eq!(
        b.get("/ui/assets/../../etc/passwd").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        b.get("/ui/assets/secret.txt").await.status,
        StatusCode::NOT_FOUND
    );
    let docs = b.get("/docs").await;
    assert!(
        docs.body.contains("/openapi.json") && !docs.body.contains("http"),
        "nothing from a CDN"
    );
}
