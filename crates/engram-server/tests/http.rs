//! The REST API through `oneshot` (no socket), with the real model and a real SQLite store.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use engram_core::access::{Principal, Role};
use engram_core::clock::SystemClock;
use engram_core::memory::Scope;
use engram_core::service::MemoryService;
use engram_core::service::{KeyService, NewKey};
use engram_server::auth::{AuthMode, RateLimitConfig};
use engram_server::{AppState, ServerConfig, app};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

mod common;

struct TestApp {
    router: Router,
    memory: MemoryService,
    keys: KeyService,
    /// Sent with every request that has no `Authorization` of its own.
    key: Option<String>,
    dir: tempfile::TempDir,
}

/// An app whose requests carry an admin key bound to org `acme` (or, with
/// `InsecureNoAuth`, no key: the operator).
async fn test_app_with(config: ServerConfig) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let (store, memory) = common::open(dir.path()).await;
    let keys = KeyService::new(store.keys(), Arc::new(SystemClock));
    let key = match config.auth {
        AuthMode::Keys => Some(create_key(&keys, "acme", None, Role::Admin).await),
        AuthMode::InsecureNoAuth => None,
    };
    TestApp {
        router: app(AppState::new(memory.clone(), keys.clone(), config)),
        memory,
        keys,
        key,
        dir,
    }
}

async fn create_key(keys: &KeyService, org: &str, user: Option<&str>, role: Role) -> String {
    let new = NewKey {
        name: format!("{org} {role}"),
        role: Some(role),
        binding: Scope {
            org_id: Some(org.into()),
            user_id: user.map(Into::into),
            ..Default::default()
        },
        rate_limit: None,
    };
    keys.create(&Principal::operator(), new).await.unwrap().1
}

async fn test_app() -> TestApp {
    test_app_with(ServerConfig::default()).await
}

impl TestApp {
    async fn send(&self, mut req: Request<Body>) -> (StatusCode, Option<String>, Value) {
        if let Some(key) = &self.key
            && !req.headers().contains_key(header::AUTHORIZATION)
        {
            let v = format!("Bearer {key}").parse().unwrap();
            req.headers_mut().insert(header::AUTHORIZATION, v);
        }
        let (status, ctype, _, body) = self.send_raw(req).await;
        (status, ctype, body)
    }

    /// The request as given; also returns the response headers.
    async fn send_raw(
        &self,
        req: Request<Body>,
    ) -> (StatusCode, Option<String>, axum::http::HeaderMap, Value) {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let ctype = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, ctype, headers, body)
    }

    /// `call` with a given key (`None`: no credentials at all).
    async fn call_as(
        &self,
        key: Option<&str>,
        method: &str,
        uri: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(k) = key {
            req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
        }
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        let (status, _, _, v) = self.send_raw(req.body(body).unwrap()).await;
        (status, v)
    }

    async fn call(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        let (status, _, v) = self.send(req.body(body).unwrap()).await;
        (status, v)
    }

    async fn count(&self, user: &str) -> usize {
        let (status, body) = self
            .call(
                "GET",
                &format!("/v1/memories?user_id={user}&limit=1000"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["results"].as_array().unwrap().len()
    }
}

/// Asserts an RFC 9457 problem body with the given status and code.
fn assert_problem(
    status: StatusCode,
    ctype: Option<&str>,
    body: &Value,
    want: StatusCode,
    code: &str,
) {
    assert_eq!(status, want, "{body}");
    assert_eq!(ctype, Some("application/problem+json"), "{body}");
    assert_eq!(body["status"], json!(want.as_u16()));
    assert_eq!(body["code"], json!(code), "{body}");
    assert_eq!(body["type"], json!(format!("urn:engram:problem:{code}")));
    assert!(body["title"].is_string());
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
}

#[tokio::test]
async fn add_and_search_are_scoped() {
    let t = test_app().await;
    let (s, body) = t
        .call(
            "POST",
            "/v1/memories",
            Some(json!({"messages": [
            {"role": "user", "content": "I moved to Lisbon last spring and I am vegetarian now."},
            {"role": "assistant", "content": "Noted!"}
        ], "user_id": "alice"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert!(
        results
            .iter()
            .all(|r| r["event"] == "ADD" && r["id"].is_string())
    );
    t.call(
        "POST",
        "/v1/memories",
        Some(json!({"text": "Bob lives in Berlin and loves steak.", "user_id": "bob"})),
    )
    .await;

    let (s, body) = t
        .call(
            "POST",
            "/v1/memories/search",
            Some(json!({"query": "Where does she live?", "filters": {"user_id": "alice"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let hits = body["results"].as_array().unwrap();
    assert!(
        hits[0]["memory"].as_str().unwrap().contains("Lisbon"),
        "{body}"
    );
    assert!(hits.iter().all(|h| h["user_id"] == "alice"));
    assert!(hits[0]["score"].as_f64().unwrap() > 0.0);

    let (_, body) = t
        .call(
            "POST",
            "/v1/memories/search",
            Some(json!({"query": "Lisbon vegetarian", "user_id": "carol"})),
        )
        .await;
    assert_eq!(body["results"], json!([]), "another user sees nothing");
    let (_, body) = t
        .call(
            "POST",
            "/v1/memories/search",
            Some(json!({"query": "Lisbon vegetarian", "user_id": "bob"})),
        )
        .await;
    assert!(
        body["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["user_id"] == "bob")
    );
}

#[tokio::test]
async fn duplicates_are_noop() {
    let t = test_app().await;
    let add = |text: &str| json!({"text": text, "user_id": "dan"});
    let (_, first) = t
        .call(
            "POST",
            "/v1/memories",
            Some(add("Dan's favourite colour is green.")),
        )
        .await;
    let (_, again) = t
        .call(
            "POST",
            "/v1/memories",
            Some(add("Dan's favourite colour is green.")),
        )
        .await;
    assert_eq!(again["results"][0]["event"], "NOOP");
    assert_eq!(again["results"][0]["id"], first["results"][0]["id"]);
    let (_, near) = t
        .call(
            "POST",
            "/v1/memories",
            Some(add("dan's favourite colour is green")),
        )
        .await;
    assert_eq!(near["results"][0]["event"], "NOOP", "near-duplicate");
    // The same text for another user is not a duplicate.
    let (_, other) = t
        .call(
            "POST",
            "/v1/memories",
            Some(json!({"text": "Dan's favourite colour is green.", "user_id": "eve"})),
        )
        .await;
    assert_eq!(other["results"][0]["event"], "ADD");
    assert_eq!(t.count("dan").await, 1);
}

#[tokio::test]
async fn crud_history_and_pagination() {
    let t = test_app().await;
    let (_, added) = t.call("POST", "/v1/memories", Some(json!({"text": "Fay works at Acme.", "user_id": "fay", "metadata": {"source": "chat"}}))).await;
    let id = added["results"][0]["id"].as_str().unwrap().to_owned();
    let (s, got) = t.call("GET", &format!("/v1/memories/{id}"), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got["memory"], "Fay works at Acme.");
    assert_eq!(got["metadata"], json!({"source": "chat"}));
    assert_eq!(got["entities"][0]["name"], "Fay");

    let (s, updated) = t
        .call(
            "PATCH",
            &format!("/v1/memories/{id}"),
            Some(json!({"text": "Fay joined Stripe."})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{updated}");
    assert_eq!(
        (updated["memory"].as_str(), updated["version"].as_u64()),
        (Some("Fay joined Stripe."), Some(2))
    );
    let (_, hits) = t
        .call(
            "POST",
            "/v1/memories/search",
            Some(json!({"query": "Where does Fay work?", "user_id": "fay"})),
        )
        .await;
    assert_eq!(hits["results"][0]["memory"], "Fay joined Stripe.");

    let (s, _) = t.call("DELETE", &format!("/v1/memories/{id}"), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = t.call("GET", &format!("/v1/memories/{id}"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, history) = t
        .call("GET", &format!("/v1/memories/{id}/history"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let events: Vec<&str> = history["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, vec!["ADD", "UPDATE", "DELETE"]);
    assert_eq!(history["results"][1]["old_memory"], "Fay works at Acme.");
    assert_eq!(history["results"][1]["new_memory"], "Fay joined Stripe.");

    // Pagination walks everything once, newest first.
    let texts: Vec<Value> = [
        "Gil grows tomatoes on the balcony.",
        "Gil's daughter starts school in September.",
        "Gil is allergic to penicillin.",
        "Gil drives an old red Volvo.",
        "Gil wants to run the Berlin marathon.",
        "Gil prefers tea over coffee in the morning.",
        "Gil's band rehearses in a garage on Thursdays.",
    ]
    .iter()
    .map(|c| json!({"role": "user", "content": c}))
    .collect();
    let (_, added) = t
        .call(
            "POST",
            "/v1/memories",
            Some(json!({"messages": texts, "user_id": "gil"})),
        )
        .await;
    assert!(
        added["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["event"] == "ADD"),
        "{added}"
    );
    let mut cursor: Option<String> = None;
    let mut seen = Vec::new();
    loop {
        let uri = match &cursor {
            Some(c) => format!("/v1/memories?user_id=gil&limit=3&cursor={c}"),
            None => "/v1/memories?user_id=gil&limit=3".to_owned(),
        };
        let (s, page) = t.call("GET", &uri, None).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        seen.extend(
            page["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7);
    let unique: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), 7);

    let (s, del) = t.call("DELETE", "/v1/memories?user_id=gil", None).await;
    assert_eq!((s, del["deleted"].as_u64()), (StatusCode::OK, Some(7)));
    assert_eq!(t.count("gil").await, 0);
}

#[tokio::test]
async fn explanations_and_token_budget() {
    let t = test_app().await;
    let msgs: Vec<Value> = [
        "Hana plays the cello in a string quartet.",
        "Hana's quartet rehearses every Tuesday evening.",
        "Hana is learning Japanese for a trip to Kyoto.",
    ]
    .iter()
    .map(|c| json!({"role": "user", "content": c}))
    .collect();
    t.call(
        "POST",
        "/v1/memories",
        Some(json!({"messages": msgs, "user_id": "hana"})),
    )
    .await;
    let (_, body) = t
        .call("POST", "/v1/memories/search", Some(json!({"query": "When does the quartet rehearse?", "user_id": "hana", "explain": true, "token_budget": 0})))
        .await;
    let top = &body["results"][0];
    assert!(
        top["memory"].as_str().unwrap().contains("Tuesday"),
        "{body}"
    );
    let e = &top["explanation"];
    for key in [
        "semantic",
        "keyword",
        "fused",
        "decay",
        "kind_weight",
        "score",
        "vector_path",
    ] {
        assert!(!e[key].is_null(), "explanation lacks {key}: {e}");
    }
    assert_eq!(e["vector_path"], "exact");
    assert!((e["score"].as_f64().unwrap() - top["score"].as_f64().unwrap()).abs() < 1e-6);
    // A 15-token budget keeps only what fits.
    let (_, small) = t
        .call(
            "POST",
            "/v1/memories/search",
            Some(json!({"query": "Hana", "user_id": "hana", "token_budget": 15})),
        )
        .await;
    let used: u64 = small["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["tokens"].as_u64().unwrap())
        .sum();
    assert!(used <= 15 && used > 0, "{small}");
    assert_eq!(small["tokens"].as_u64(), Some(used));
    assert!(small["results"].as_array().unwrap().len() < 3);
}

#[tokio::test]
async fn bad_input_is_problem_json_and_writes_nothing() {
    // As the operator (no binding), so a write without ids is `missing_scope`.
    let t = test_app_with(ServerConfig {
        max_body_bytes: 4096,
        auth: AuthMode::InsecureNoAuth,
        ..Default::default()
    })
    .await;
    let raw = |method: &str, uri: &str, ctype: Option<&str>, body: String| {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(c) = ctype {
            req = req.header(header::CONTENT_TYPE, c);
        }
        req.body(Body::from(body)).unwrap()
    };
    let json_ct = Some("application/json");
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (
            raw(
                "POST",
                "/v1/memories",
                json_ct,
                "{\"text\": \"Ivy likes".into(),
            ),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            raw(
                "POST",
                "/v1/memories",
                json_ct,
                json!({"text": "Ivy likes tea"}).to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "missing_scope",
        ),
        (
            raw(
                "POST",
                "/v1/memories",
                json_ct,
                json!({"text": "Ivy likes tea", "user_id": "ivy", "colour": 1}).to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            raw(
                "POST",
                "/v1/memories",
                json_ct,
                json!({"text": "Ivy", "messages": [], "user_id": "ivy"}).to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            raw(
                "POST",
                "/v1/memories",
                json_ct,
                json!({"messages": [{"role": "robot", "content": "x"}], "user_id": "ivy"})
                    .to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            raw(
                "POST",
                "/v1/memories",
                json_ct,
                json!({"text": "x".repeat(5000), "user_id": "ivy"}).to_string(),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            raw(
                "POST",
                "/v1/memories",
                Some("text/plain"),
                json!({"text": "Ivy likes tea", "user_id": "ivy"}).to_string(),
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            raw(
                "POST",
                "/v1/memories",
                json_ct,
                json!({"text": "Ivy likes tea", "user_id": "ivy", "expires_at": "next week"})
                    .to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            raw(
                "POST",
                "/v1/memories/search",
                json_ct,
                json!({"query": "tea", "filters": {"user_id": {"like": "iv%"}}}).to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_filter",
        ),
        (
            raw(
                "POST",
                "/v1/memories/search",
                json_ct,
                json!({"query": "tea", "filters": {"metadata": {"x": 1}}}).to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "missing_scope",
        ),
        (
            raw(
                "POST",
                "/v1/memories/search",
                json_ct,
                json!({"query": "tea", "user_id": "ivy", "top_k": 100000}).to_string(),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "limit_exceeded",
        ),
        (
            raw(
                "POST",
                "/v1/memories/search",
                json_ct,
                json!({"query": "  ", "user_id": "ivy"}).to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            raw("POST", "/v1/memories", json_ct, json!({"messages": [{"role": "user", "content": "hi", "name": "n".repeat(300)}], "user_id": "ivy"}).to_string()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            raw("POST", "/v1/memories/search", json_ct, json!({"query": "tea", "filters": {"user_id": {"in": vec!["x"; 300]}}}).to_string()),
            StatusCode::BAD_REQUEST,
            "invalid_filter",
        ),
        (
            raw("GET", "/v1/memories", None, String::new()),
            StatusCode::BAD_REQUEST,
            "missing_scope",
        ),
        (
            raw(
                "GET",
                "/v1/memories?user_id=ivy&cursor=garbage",
                None,
                String::new(),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            raw(
                "GET",
                "/v1/memories?user_id=ivy&limit=abc",
                None,
                String::new(),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            raw("GET", "/v1/memories/not-a-uuid", None, String::new()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            raw(
                "GET",
                &format!("/v1/memories/{}", uuid::Uuid::now_v7()),
                None,
                String::new(),
            ),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            raw(
                "PATCH",
                &format!("/v1/memories/{}", uuid::Uuid::now_v7()),
                json_ct,
                json!({"text": "x"}).to_string(),
            ),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            raw("DELETE", "/v1/memories", None, String::new()),
            StatusCode::BAD_REQUEST,
            "missing_scope",
        ),
        (
            raw("GET", "/v2/nothing", None, String::new()),
            StatusCode::NOT_FOUND,
            "route_not_found",
        ),
        (
            raw("PUT", "/v1/memories/search", None, String::new()),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    for (req, want, code) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let (status, ctype, body) = t.send(req).await;
        assert_problem(status, ctype.as_deref(), &body, want, code);
        assert!(body["request_id"].is_string(), "{what}: {body}");
        assert_eq!(t.count("ivy").await, 0, "{what} wrote something");
    }
}

#[tokio::test]
async fn request_ids_are_echoed_and_openapi_is_served() {
    let t = test_app().await;
    let req = Request::builder()
        .uri("/v1/memories/nope")
        .header("x-request-id", "trace-abc-123")
        .body(Body::empty())
        .unwrap();
    let resp = t.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.headers()["x-request-id"], "trace-abc-123");
    let body: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["request_id"], "trace-abc-123");

    let (s, doc) = t.call("GET", "/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    for path in [
        "/v1/memories",
        "/v1/memories/search",
        "/v1/memories/{id}",
        "/v1/memories/{id}/history",
    ] {
        assert!(doc["paths"].get(path).is_some(), "openapi lacks {path}");
    }
    let (s, health) = t.call("GET", "/healthz", None).await;
    assert_eq!((s, health["status"].as_str()), (StatusCode::OK, Some("ok")));
}

#[tokio::test]
async fn keys_authenticate_and_bind_every_request() {
    let t = test_app().await;
    let admin = t.key.clone().unwrap();
    // No key, a malformed key, a wrong secret: 401 problem+json with a challenge.
    let forged = format!("{}{}", &admin[..admin.len() - 4], "0000");
    for key in [None, Some("nonsense"), Some(forged.as_str())] {
        let req = Request::builder()
            .uri("/v1/memories?user_id=alice")
            .header(
                header::AUTHORIZATION,
                key.map(|k| format!("Bearer {k}")).unwrap_or_default(),
            )
            .body(Body::empty())
            .unwrap();
        let (status, ctype, headers, body) = t.send_raw(req).await;
        assert_problem(
            status,
            ctype.as_deref(),
            &body,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
        assert!(headers.contains_key(header::WWW_AUTHENTICATE));
    }
    // Probes and the API description need no key.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let (s, _) = t.call_as(None, "GET", path, None).await;
        assert_eq!(s, StatusCode::OK, "{path}");
    }

    // Mem0-style headers work too.
    let req = Request::builder()
        .uri("/v1/memories?user_id=alice")
        .header("x-api-key", &admin)
        .body(Body::empty())
        .unwrap();
    assert_eq!(t.send_raw(req).await.0, StatusCode::OK);

    // alice's key (read_write, bound to acme/alice), a read-only key, another org's key.
    let alice = create_key(&t.keys, "acme", Some("alice"), Role::ReadWrite).await;
    let reader = create_key(&t.keys, "acme", None, Role::ReadOnly).await;
    let globex = create_key(&t.keys, "globex", None, Role::Admin).await;

    let (s, added) = t
        .call_as(
            Some(&alice),
            "POST",
            "/v1/memories",
            Some(json!({"text": "Alice keeps bees on the roof"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{added}");
    let id = added["results"][0]["id"].as_str().unwrap().to_owned();
    let (_, m) = t
        .call_as(Some(&alice), "GET", &format!("/v1/memories/{id}"), None)
        .await;
    assert_eq!(
        (m["org_id"].as_str(), m["user_id"].as_str()),
        (Some("acme"), Some("alice")),
        "the binding's ids are stamped on the memory: {m}"
    );
    t.call_as(
        Some(&admin),
        "POST",
        "/v1/memories",
        Some(json!({"text": "Bob keeps bees too", "user_id": "bob"})),
    )
    .await;

    // Naming ids outside the binding is 403 and changes nothing.
    for (method, uri, body) in [
        (
            "POST",
            "/v1/memories",
            Some(json!({"text": "x", "user_id": "bob"})),
        ),
        (
            "POST",
            "/v1/memories/search",
            Some(json!({"query": "bees", "user_id": "bob"})),
        ),
        (
            "POST",
            "/v1/memories/search",
            Some(
                json!({"query": "bees", "filters": {"OR": [{"user_id": "alice"}, {"user_id": "bob"}]}}),
            ),
        ),
        ("GET", "/v1/memories?user_id=bob", None),
        ("DELETE", "/v1/memories?org_id=globex", None),
    ] {
        let (s, body) = t.call_as(Some(&alice), method, uri, body).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{method} {uri}: {body}");
        assert_eq!(body["code"], "forbidden");
    }
    // Searching without ids sees only the binding.
    let (_, found) = t
        .call_as(
            Some(&alice),
            "POST",
            "/v1/memories/search",
            Some(json!({"query": "who keeps bees?"})),
        )
        .await;
    let users: Vec<&str> = found["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(users, vec!["alice"], "{found}");
    // Another org cannot see, change or even confirm alice's memory.
    for (method, uri) in [
        ("GET", format!("/v1/memories/{id}")),
        ("GET", format!("/v1/memories/{id}/history")),
        ("DELETE", format!("/v1/memories/{id}")),
    ] {
        let (s, body) = t.call_as(Some(&globex), method, &uri, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method} {uri}: {body}");
    }
    let (s, _) = t
        .call_as(
            Some(&globex),
            "PATCH",
            &format!("/v1/memories/{id}"),
            Some(json!({"text": "hacked"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // The read-only key reads but cannot write.
    let (s, _) = t
        .call_as(Some(&reader), "GET", "/v1/memories?user_id=alice", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = t
        .call_as(Some(&reader), "DELETE", &format!("/v1/memories/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    let (_, m) = t
        .call_as(Some(&alice), "GET", &format!("/v1/memories/{id}"), None)
        .await;
    assert_eq!(m["memory"], "Alice keeps bees on the roof", "unchanged");

    // Key management: admin only, within its own org.
    let (s, _) = t.call_as(Some(&alice), "GET", "/v1/keys", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let admin_id = &admin["engram_".len().."engram_".len() + 16];
    let (s, body) = t
        .call_as(
            Some(&admin),
            "DELETE",
            &format!("/v1/keys/{admin_id}"),
            None,
        )
        .await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "a key cannot revoke itself: {body}"
    );
    let (s, body) = t
        .call_as(
            Some(&admin),
            "POST",
            "/v1/keys",
            Some(json!({"name": "x", "org_id": "globex"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    let (s, created) = t
        .call_as(
            Some(&admin),
            "POST",
            "/v1/keys",
            Some(json!({"name": "ci", "user_id": "carol", "role": "read_only"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!(
        (created["org_id"].as_str(), created["role"].as_str()),
        (Some("acme"), Some("read_only"))
    );
    let carol = created["key"].as_str().unwrap().to_owned();
    let (s, _) = t.call_as(Some(&carol), "GET", "/v1/memories", None).await;
    assert_eq!(s, StatusCode::OK);
    let (_, listed) = t.call_as(Some(&admin), "GET", "/v1/keys", None).await;
    let ids: Vec<&str> = listed["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&created["id"].as_str().unwrap()));
    assert!(
        listed.to_string().find(&carol[30..]).is_none(),
        "secrets are never listed"
    );
    assert_eq!(
        ids.len(),
        4,
        "acme's keys only (admin, alice, reader, carol): {listed}"
    );
    let (s, _) = t
        .call_as(
            Some(&globex),
            "DELETE",
            &format!("/v1/keys/{}", created["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "another org's admin cannot revoke it"
    );
    let (s, revoked) = t
        .call_as(
            Some(&admin),
            "DELETE",
            &format!("/v1/keys/{}", created["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(revoked["revoked_at"].is_string());
    let (s, _) = t.call_as(Some(&carol), "GET", "/v1/memories", None).await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "a revoked key stops working at once"
    );
}

#[tokio::test]
async fn rate_limits_answer_429_with_headers() {
    let t = test_app_with(ServerConfig {
        rate_limit: RateLimitConfig {
            per_minute: 1,
            burst: 2,
        },
        ..Default::default()
    })
    .await;
    let req = || {
        Request::builder()
            .uri("/v1/memories?user_id=alice")
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", t.key.as_ref().unwrap()),
            )
            .body(Body::empty())
            .unwrap()
    };
    let (s, _, h, _) = t.send_raw(req()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["ratelimit-limit"], "1");
    assert_eq!(h["ratelimit-remaining"], "0");
    let (s, ctype, h, body) = t.send_raw(req()).await;
    assert_problem(
        s,
        ctype.as_deref(),
        &body,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    );
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((50..=60).contains(&retry), "retry-after {retry}");
    assert_eq!(h["ratelimit-remaining"], "0");
    // Probes are never limited.
    let (s, _) = t.call_as(None, "GET", "/healthz", None).await;
    assert_eq!(s, StatusCode::OK);
    // Another key has its own bucket.
    let other = create_key(&t.keys, "acme", None, Role::ReadOnly).await;
    let (s, _) = t
        .call_as(Some(&other), "GET", "/v1/memories?user_id=alice", None)
        .await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_while_the_store_cannot_take_writes() {
    let t = test_app().await;
    let (s, ready) = t.call_as(None, "GET", "/readyz", None).await;
    assert_eq!(s, StatusCode::OK, "{ready}");
    assert_eq!(ready["checks"]["store"]["status"], "ok");
    assert_eq!(ready["checks"]["llm"]["status"], "not_configured");
    if common::postgres() {
        // Postgres's read-only case is in engram-postgres's own tests.
        return;
    }
    let other = rusqlite::Connection::open(t.dir.path().join(engram_sqlite::DB_FILE)).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE;").unwrap();
    // One probe answers for up to a second (`/readyz` is cheap however often
    // it is called): the failure shows at the next probe.
    let started = std::time::Instant::now();
    let (s, ready) = loop {
        let (s, ready) = t.call_as(None, "GET", "/readyz", None).await;
        if s != StatusCode::OK || started.elapsed() > std::time::Duration::from_secs(10) {
            break (s, ready);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert_eq!(ready["status"], "not_ready");
    assert_eq!(ready["checks"]["store"]["status"], "fail");
    // The probe is public: it says which check failed, never the store's
    // own message (that goes to the log).
    let detail = ready["checks"]["store"]["detail"].as_str().unwrap();
    assert!(detail.contains("cannot take writes"), "{ready}");
    assert!(
        !detail.contains("locked") && !detail.contains("database"),
        "{ready}"
    );
    let (s, _) = t.call_as(None, "GET", "/healthz", None).await;
    assert_eq!(s, StatusCode::OK, "liveness is unaffected");
    other.execute_batch("ROLLBACK;").unwrap();
    let started = std::time::Instant::now();
    let s = loop {
        let (s, _) = t.call_as(None, "GET", "/readyz", None).await;
        if s == StatusCode::OK || started.elapsed() > std::time::Duration::from_secs(10) {
            break s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(s, StatusCode::OK, "ready again at the next probe");
}

#[tokio::test]
async fn metrics_count_routes_searches_and_operations() {
    let t = test_app().await;
    t.call(
        "POST",
        "/v1/memories",
        Some(json!({"text": "Metrics Mia drinks mate", "user_id": "mia"})),
    )
    .await;
    t.call(
        "POST",
        "/v1/memories/search",
        Some(json!({"query": "what does Mia drink?", "user_id": "mia"})),
    )
    .await;
    t.call(
        "POST",
        "/v1/memories/search",
        Some(json!({"query": "anything", "user_id": "nobody-metrics"})),
    )
    .await;
    let (s, text) = t.call_as(None, "GET", "/metrics", None).await;
    assert_eq!(s, StatusCode::OK);
    let text = text.as_str().unwrap();
    for needle in [
        "engram_http_requests_total{method=\"POST\",route=\"/v1/memories/search\",status=\"200\"}",
        "engram_http_request_duration_seconds_bucket{method=\"POST\",route=\"/v1/memories\"",
        "engram_search_duration_seconds_bucket{path=\"exact\"",
        "engram_searches_total{hit=\"true\"}",
        "engram_searches_total{hit=\"false\"}",
        "engram_search_injected_tokens_bucket",
        "engram_memory_operations_total{event=\"ADD\"}",
        "engram_memories ",
        "engram_store_bytes ",
    ] {
        assert!(text.contains(needle), "/metrics lacks {needle}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_adds_are_durable_jobs_with_a_dead_letter_queue() {
    use engram_core::service::{JobConfig, JobRunner};
    let t = test_app().await;
    let runner = JobRunner::new(t.memory.clone(), JobConfig::default(), "test-worker");
    let (s, accepted) = t
        .call(
            "POST",
            "/v1/memories",
            Some(json!({"text": "Zoe collects vinyl records", "user_id": "zoe", "async": true})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{accepted}");
    assert_eq!(accepted["status"], "queued");
    let job = accepted["job_id"].as_str().unwrap().to_owned();
    let (_, j) = t.call("GET", &format!("/v1/jobs/{job}"), None).await;
    assert_eq!(
        (j["status"].as_str(), j["attempts"].as_u64()),
        (Some("queued"), Some(0))
    );
    assert_eq!(
        t.count("zoe").await,
        0,
        "nothing is written before a worker runs"
    );
    assert!(runner.run_once().await.unwrap());
    assert!(!runner.run_once().await.unwrap(), "nothing else is due");
    let (_, j) = t.call("GET", &format!("/v1/jobs/{job}"), None).await;
    assert_eq!(j["status"], "done", "{j}");
    assert_eq!(j["result"]["results"][0]["event"], "ADD");
    assert_eq!(t.count("zoe").await, 1);
    let (s, _) = t
        .call(
            "GET",
            &format!(
                "/v1/memories/{}",
                j["result"]["results"][0]["id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);

    // Invalid input is refused at once; no job is queued.
    let (s, body) = t
        .call(
            "POST",
            "/v1/memories",
            Some(json!({"text": "x".repeat(20_000), "user_id": "zoe", "async": true})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (_, all) = t.call("GET", "/v1/jobs", None).await;
    assert_eq!(all["results"].as_array().unwrap().len(), 1);

    // Another org's key cannot see the job.
    let other = create_key(&t.keys, "globex", None, Role::Admin).await;
    let (s, _) = t
        .call_as(Some(&other), "GET", &format!("/v1/jobs/{job}"), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // A job that cannot succeed lands in the dead-letter queue at once (a retry would not help),
    // and can be re-queued by hand.
    let bad = engram_core::ports::Job {
        id: uuid::Uuid::now_v7(),
        kind: "add".into(),
        state: engram_core::ports::JobState::Queued,
        payload: json!({"not": "an add"}),
        principal: Principal::operator(),
        scope: Scope {
            org_id: Some("acme".into()),
            ..Default::default()
        },
        request_id: None,
        attempts: 0,
        max_attempts: 3,
        last_error: None,
        result: None,
        created_at: t.memory.now(),
        updated_at: t.memory.now(),
        run_after: t.memory.now(),
        lease_owner: None,
        lease_until: None,
        ordering: None,
    };
    t.memory.store().job_insert(&bad).await.unwrap();
    assert!(runner.run_once().await.unwrap());
    let (_, dead) = t.call("GET", "/v1/jobs?state=dead", None).await;
    let dead = dead["results"].as_array().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["id"], json!(bad.id));
    assert!(
        dead[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("not an add"),
        "{}",
        dead[0]
    );
    let (s, body) = t.call("POST", &format!("/v1/jobs/{job}/retry"), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "only dead jobs: {body}");
    let (s, r) = t
        .call("POST", &format!("/v1/jobs/{}/retry", bad.id), None)
        .await;
    assert_eq!(
        (s, r["status"].as_str(), r["attempts"].as_u64()),
        (StatusCode::OK, Some("queued"), Some(0))
    );
    let (s, _) = t.call("GET", "/v1/jobs?state=sleeping", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn idempotency_keys_replay_and_refuse_a_different_request() {
    let t = test_app().await;
    let post = |key: &str, body: Value, auth: Option<String>| {
        let mut req = Request::builder()
            .method("POST")
            .uri("/v1/memories")
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", key);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, format!("Bearer {a}"));
        }
        req.body(Body::from(body.to_string())).unwrap()
    };
    let a = json!({"text": "Yara flies gliders", "user_id": "yara"});
    let admin = t.key.clone();
    let (s, _, h, first) = t.send_raw(post("k1", a.clone(), admin.clone())).await;
    assert_eq!(s, StatusCode::OK);
    assert!(!h.contains_key("idempotent-replayed"));
    assert_eq!(first["results"][0]["event"], "ADD");
    let (s, _, h, again) = t.send_raw(post("k1", a.clone(), admin.clone())).await;
    assert_eq!(
        (s, &again),
        (StatusCode::OK, &first),
        "the first answer, replayed"
    );
    assert_eq!(h["idempotent-replayed"], "true");
    let (_, hist) = t
        .call(
            "GET",
            &format!(
                "/v1/memories/{}/history",
                first["results"][0]["id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(
        hist["results"].as_array().unwrap().len(),
        1,
        "the replay did nothing"
    );
    let (s, ctype, _, body) = t
        .send_raw(post(
            "k1",
            json!({"text": "Yara flies kites", "user_id": "yara"}),
            admin.clone(),
        ))
        .await;
    assert_problem(s, ctype.as_deref(), &body, StatusCode::CONFLICT, "conflict");
    assert_eq!(
        t.count("yara").await,
        1,
        "the different request did not run"
    );
    // Keys are per caller: another key's `k1` is its own.
    let other = create_key(&t.keys, "acme", None, Role::ReadWrite).await;
    let (s, _, h, body) = t.send_raw(post("k1", a.clone(), Some(other))).await;
    assert_eq!(
        (s, body["results"][0]["event"].as_str()),
        (StatusCode::OK, Some("NOOP"))
    );
    assert!(!h.contains_key("idempotent-replayed"));
    // Async adds replay their job id: one job, whatever the retries.
    let b = json!({"text": "Yara restores boats", "user_id": "yara", "async": true});
    let (s1, _, _, j1) = t.send_raw(post("k2", b.clone(), admin.clone())).await;
    let (s2, _, _, j2) = t.send_raw(post("k2", b.clone(), admin.clone())).await;
    assert_eq!((s1, s2), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
    assert_eq!(j1["job_id"], j2["job_id"]);
    let (_, jobs) = t.call("GET", "/v1/jobs", None).await;
    assert_eq!(jobs["results"].as_array().unwrap().len(), 1);
    let (s, _, _, _) = t.send_raw(post(&"x".repeat(300), a, admin)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "an overlong key");
}

#[tokio::test]
async fn revert_restores_an_earlier_version_as_a_new_one() {
    let t = test_app().await;
    let (_, r) = t
        .call(
            "POST",
            "/v1/memories",
            Some(json!({"text": "Quinn lives in Oslo", "user_id": "quinn"})),
        )
        .await;
    let id = r["results"][0]["id"].as_str().unwrap().to_owned();
    for text in ["Quinn lives in Bergen", "Quinn lives in Tromso"] {
        let (s, _) = t
            .call(
                "PATCH",
                &format!("/v1/memories/{id}"),
                Some(json!({"text": text})),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
    }
    let (s, m) = t
        .call(
            "POST",
            &format!("/v1/memories/{id}/revert"),
            Some(json!({"version": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{m}");
    assert_eq!(
        (m["memory"].as_str(), m["version"].as_u64()),
        (Some("Quinn lives in Oslo"), Some(4))
    );
    let (_, h) = t
        .call("GET", &format!("/v1/memories/{id}/history"), None)
        .await;
    let h = h["results"].as_array().unwrap();
    let last = h.last().unwrap();
    assert_eq!(
        (
            last["event"].as_str(),
            last["old_memory"].as_str(),
            last["new_memory"].as_str(),
            last["reason"].as_str()
        ),
        (
            Some("REVERT"),
            Some("Quinn lives in Tromso"),
            Some("Quinn lives in Oslo"),
            Some("revert to version 1")
        )
    );
    assert_eq!(h.len(), 4, "every version stays in the history");
    // The search index follows the revert.
    let (_, found) = t
        .call(
            "POST",
            "/v1/memories/search",
            Some(json!({"query": "Oslo", "user_id": "quinn"})),
        )
        .await;
    assert_eq!(found["results"][0]["memory"], "Quinn lives in Oslo");
    let (s, _) = t
        .call(
            "POST",
            &format!("/v1/memories/{id}/revert"),
            Some(json!({"version": 9})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = t
        .call(
            "POST",
            &format!("/v1/memories/{id}/revert"),
            Some(json!({"version": 4})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "the current version");
    let other = create_key(&t.keys, "globex", None, Role::Admin).await;
    let (s, _) = t
        .call_as(
            Some(&other),
            "POST",
            &format!("/v1/memories/{id}/revert"),
            Some(json!({"version": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "outside the binding");
}

#[tokio::test]
async fn as_of_answers_as_the_memory_stood_then() {
    let t = test_app().await;
    let (_, r) = t
        .call(
            "POST",
            "/v1/memories",
            Some(json!({"text": "Rosa works at Acme", "user_id": "rosa"})),
        )
        .await;
    let id = r["results"][0]["id"].as_str().unwrap().to_owned();
    let (_, other) = t
        .call(
            "POST",
            "/v1/memories",
            Some(json!({"text": "Rosa is vegetarian", "user_id": "rosa"})),
        )
        .await;
    let veg = other["results"][0]["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let before = jiff::Timestamp::now().to_string();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    t.call(
        "PATCH",
        &format!("/v1/memories/{id}"),
        Some(json!({"text": "Rosa works at Stripe"})),
    )
    .await;
    t.call("DELETE", &format!("/v1/memories/{veg}"), None).await;
    let search = |as_of: Option<String>| {
        let mut body =
            json!({"query": "where does Rosa work? what does she eat?", "user_id": "rosa"});
        if let Some(a) = as_of {
            body["as_of"] = json!(a);
        }
        body
    };
    let texts = |v: &Value| -> Vec<String> {
        let mut t: Vec<String> = v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["memory"].as_str().unwrap().to_owned())
            .collect();
        t.sort();
        t
    };
    let (_, now) = t
        .call("POST", "/v1/memories/search", Some(search(None)))
        .await;
    assert_eq!(texts(&now), vec!["Rosa works at Stripe"]);
    let (s, then) = t
        .call("POST", "/v1/memories/search", Some(search(Some(before))))
        .await;
    assert_eq!(s, StatusCode::OK, "{then}");
    assert_eq!(
        texts(&then),
        vec!["Rosa is vegetarian", "Rosa works at Acme"],
        "as it stood before the update and the delete"
    );
    let (_, ancient) = t
        .call(
            "POST",
            "/v1/memories/search",
            Some(search(Some("2000-01-01T00:00:00Z".into()))),
        )
        .await;
    assert_eq!(texts(&ancient), Vec::<String>::new(), "nothing existed yet");
    let (s, body) = t
        .call(
            "POST",
            "/v1/memories/search",
            Some(json!({"query": "x", "user_id": "rosa", "as_of": "yesterday"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    // Another org's key sees nothing of rosa's past either.
    let other = create_key(&t.keys, "globex", None, Role::Admin).await;
    let mut b = search(Some(jiff::Timestamp::now().to_string()));
    b["user_id"] = json!("rosa");
    let (_, theirs) = t
        .call_as(Some(&other), "POST", "/v1/memories/search", Some(b))
        .await;
    assert_eq!(texts(&theirs), Vec::<String>::new());
}
