//! The REST API through `oneshot` (no socket), with the real model and a real SQLite store.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use engram_core::config::{IngestConfig, RetrievalConfig};
use engram_core::service::{MemoryService, SystemClock};
use engram_embed::BertEmbedder;
use engram_server::{AppState, ServerConfig, app};
use engram_sqlite::{SqliteOptions, SqliteStore};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

fn embedder() -> Arc<BertEmbedder> {
    static MODEL: OnceLock<Arc<BertEmbedder>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            Arc::new(
                BertEmbedder::load(&engram_embed::default_model_dir())
                    .unwrap_or_else(|e| panic!("{e}")),
            )
        })
        .clone()
}

struct TestApp {
    router: Router,
    _dir: tempfile::TempDir,
}

async fn test_app_with(config: ServerConfig) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_async(dir.path().to_owned(), SqliteOptions::default())
        .await
        .unwrap();
    let memory = MemoryService::new(
        Arc::new(store),
        embedder(),
        RetrievalConfig::default(),
        IngestConfig::default(),
        1000,
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    TestApp {
        router: app(AppState { memory, config }),
        _dir: dir,
    }
}

async fn test_app() -> TestApp {
    test_app_with(ServerConfig::default()).await
}

impl TestApp {
    async fn send(&self, req: Request<Body>) -> (StatusCode, Option<String>, Value) {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let ctype = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        (status, ctype, body)
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
    let t = test_app_with(ServerConfig {
        max_body_bytes: 4096,
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
