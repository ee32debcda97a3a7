//! Feedback and batches, over the real router and store: a rating is kept
//! in place with a history row and an audit event, lowers or removes the
//! memory from search (shown in the explanation), survives an update, and
//! stays inside the key's binding; Mem0's batch update and delete change
//! all named memories in one transaction or none, naming the one that
//! stopped them. SQLite, and Postgres with `ENGRAM_TEST_STORE=postgres`.

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use engram_core::access::Role;
use engram_core::clock::SystemClock;
use engram_core::ctx::RequestCtx;
use engram_core::memory::Scope;
use engram_core::service::{AddInput, Content, KeyService, MemoryService};
use engram_server::{AppState, ServerConfig, app};
use serde_json::{Value, json};

mod common;

struct World {
    router: Router,
    memory: MemoryService,
    keys: KeyService,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let (store, memory) = common::open(dir.path()).await;
    let keys = KeyService::new(store.keys(), Arc::new(SystemClock));
    let config = ServerConfig {
        workers: 0,
        ..ServerConfig::default()
    };
    let state = AppState::new(memory.clone(), keys.clone(), config);
    World {
        router: app(state),
        memory,
        keys,
        _dir: dir,
    }
}

fn user(u: &str) -> Scope {
    Scope {
        org_id: Some("acme".into()),
        user_id: Some(u.into()),
        ..Default::default()
    }
}

impl World {
    async fn key(&self, binding: Scope, role: Role) -> String {
        common::key(&self.keys, binding, role).await
    }

    async fn call(
        &self,
        key: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        common::call(&self.router, key, method, path, body).await
    }

    async fn add(&self, text: &str, scope: Scope) -> String {
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

    /// Search hits' ids and explanations.
    async fn search(&self, key: &str, q: &str, user: &str) -> Vec<(String, Value)> {
        let (s, r) = self
            .call(
                key,
                "POST",
                "/v1/memories/search",
                Some(json!({"query": q, "user_id": user, "explain": true})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{r}");
        r["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h["id"].as_str().unwrap().to_owned(), h.clone()))
            .collect()
    }
}

#[tokio::test]
async fn feedback_is_kept_shown_and_weighs_search() {
    let w = world().await;
    let rw = w.key(user("u1"), Role::ReadWrite).await;
    let ro = w.key(user("u1"), Role::ReadOnly).await;
    let other = w.key(user("u2"), Role::ReadWrite).await;
    let tea = w
        .add("Alice drinks green tea every morning.", user("u1"))
        .await;
    let coffee = w
        .add("Alice drinks black coffee every morning.", user("u1"))
        .await;
    let hits = w
        .search(&rw, "what does Alice drink in the morning", "u1")
        .await;
    assert_eq!(hits.len(), 2);
    let before: f64 = hits.iter().find(|h| h.0 == tea).unwrap().1["score"]
        .as_f64()
        .unwrap();

    // NEGATIVE: in place (same version), in the history and the audit log, and half the score.
    let (s, m) = w
        .call(
            &rw,
            "POST",
            &format!("/v1/memories/{tea}/feedback"),
            Some(json!({"feedback": "NEGATIVE", "reason": "she quit tea"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{m}");
    assert_eq!(
        (m["feedback"].as_str(), m["version"].as_u64()),
        (Some("NEGATIVE"), Some(1))
    );
    let hits = w
        .search(&rw, "what does Alice drink in the morning", "u1")
        .await;
    assert_eq!(hits[0].0, coffee, "the rated memory ranks lower");
    let after = &hits.iter().find(|h| h.0 == tea).unwrap().1;
    assert_eq!(after["explanation"]["feedback"], 0.5);
    assert!(
        (after["score"].as_f64().unwrap() - before / 2.0).abs() < 1e-3,
        "{after} vs {before}"
    );
    let (_, h) = w
        .call(&rw, "GET", &format!("/v1/memories/{tea}/history"), None)
        .await;
    let last = h["results"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["event"].as_str(), last["reason"].as_str()),
        (Some("FEEDBACK"), Some("NEGATIVE: she quit tea")),
        "{h}"
    );
    let (_, audit) = w
        .call(
            &w.key(
                Scope {
                    org_id: Some("acme".into()),
                    ..Default::default()
                },
                Role::Admin,
            )
            .await,
            "GET",
            "/v1/audit?action=memory.feedback",
            None,
        )
        .await;
    assert_eq!(
        audit["results"].as_array().map(Vec::len),
        Some(1),
        "{audit}"
    );

    // It survives an update of the text.
    let (s, _) = w
        .call(
            &rw,
            "PATCH",
            &format!("/v1/memories/{tea}"),
            Some(json!({"text": "Alice drinks jasmine tea every morning."})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, m) = w
        .call(&rw, "GET", &format!("/v1/memories/{tea}"), None)
        .await;
    assert_eq!(
        (m["feedback"].as_str(), m["version"].as_u64()),
        (Some("NEGATIVE"), Some(2))
    );

    // VERY_NEGATIVE (through Mem0's route): out of search, still readable.
    let (s, r) = w
        .call(
            &rw,
            "POST",
            "/v1/feedback/",
            Some(json!({"memory_id": tea, "feedback": "VERY_NEGATIVE", "feedback_reason": null})),
        )
        .await;
    assert_eq!(
        (s, r["feedback"].as_str()),
        (StatusCode::OK, Some("VERY_NEGATIVE")),
        "{r}"
    );
    let hits = w
        .search(&rw, "what does Alice drink in the morning", "u1")
        .await;
    assert_eq!(
        hits.iter().map(|h| h.0.as_str()).collect::<Vec<_>>(),
        [coffee.as_str()]
    );
    let (s, _) = w
        .call(&rw, "GET", &format!("/v1/memories/{tea}"), None)
        .await;
    assert_eq!(s, StatusCode::OK);

    // Cleared: back in search at its full score.
    let (s, _) = w
        .call(
            &rw,
            "POST",
            "/v1/feedback/",
            Some(json!({"memory_id": tea, "feedback": null})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let hits = w
        .search(&rw, "what does Alice drink in the morning", "u1")
        .await;
    assert_eq!(hits.len(), 2);
    assert!(hits.iter().all(|h| h.1["explanation"]["feedback"] == 1.0));

    // Who may: read-only keys may not, another user's key does not see it,
    // a bad rating is refused and changes nothing.
    let (s, _) = w
        .call(
            &ro,
            "POST",
            &format!("/v1/memories/{tea}/feedback"),
            Some(json!({"feedback": "NEGATIVE"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = w
        .call(
            &other,
            "POST",
            "/v1/feedback/",
            Some(json!({"memory_id": tea, "feedback": "NEGATIVE"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = w
        .call(
            &rw,
            "POST",
            "/v1/feedback/",
            Some(json!({"memory_id": tea, "feedback": "MEH"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = w
        .call(
            &rw,
            "POST",
            &format!("/v1/memories/{tea}/feedback"),
            Some(json!({"feedback": "NEGATIVE", "reason": "x".repeat(1001)})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (_, m) = w
        .call(&rw, "GET", &format!("/v1/memories/{tea}"), None)
        .await;
    assert!(m.get("feedback").is_none(), "{m}");
}

#[tokio::test]
async fn batches_change_all_or_nothing_inside_the_binding() {
    let w = world().await;
    let rw = w.key(user("u1"), Role::ReadWrite).await;
    let a = w.add("Carol keeps chickens.", user("u1")).await;
    let b = w.add("Carol sails on Saturdays.", user("u1")).await;
    let theirs = w.add("Dan plays chess.", user("u2")).await;

    let (s, r) = w
        .call(
            &rw,
            "PUT",
            "/v1/batch/",
            Some(json!({"memories": [
                {"memory_id": a, "text": "Carol keeps ducks."},
                {"memory_id": b, "metadata": {"verified": true}},
            ]})),
        )
        .await;
    assert_eq!(
        (s, r["message"].as_str()),
        (StatusCode::OK, Some("Successfully updated 2 memories")),
        "{r}"
    );
    let (_, m) = w.call(&rw, "GET", &format!("/v1/memories/{a}"), None).await;
    assert_eq!(m["memory"], "Carol keeps ducks.");
    let (_, m) = w.call(&rw, "GET", &format!("/v1/memories/{b}"), None).await;
    assert_eq!(
        (m["metadata"]["verified"].as_bool(), m["memory"].as_str()),
        (Some(true), Some("Carol sails on Saturdays."))
    );

    // One memory outside the binding stops the batch: nothing lands, the error names it.
    for (method, body) in [
        (
            "PUT",
            json!({"memories": [{"memory_id": a, "text": "Must not land."}, {"memory_id": theirs, "text": "Nor this."}]}),
        ),
        (
            "DELETE",
            json!({"memories": [{"memory_id": a}, {"memory_id": theirs}]}),
        ),
    ] {
        let (s, r) = w.call(&rw, method, "/v1/batch/", Some(body)).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method}: {r}");
        assert!(r["detail"].as_str().unwrap().contains(&theirs), "{r}");
    }
    let (_, m) = w.call(&rw, "GET", &format!("/v1/memories/{a}"), None).await;
    assert_eq!(m["memory"], "Carol keeps ducks.");

    // Bad batches are refused whole.
    for body in [
        json!({"memories": []}),
        json!({"memories": [{"memory_id": a}, {"memory_id": a}]}),
        json!({"memories": [{"text": "no id"}]}),
        json!({"memories": "nope"}),
        json!({"memories": [{"memory_id": a, "text": ""}]}),
    ] {
        let (s, r) = w.call(&rw, "PUT", "/v1/batch/", Some(body.clone())).await;
        assert!(
            s == StatusCode::BAD_REQUEST || s == StatusCode::UNPROCESSABLE_ENTITY,
            "{body} → {s} {r}"
        );
    }
    let many: Vec<Value> = (0..1001).map(|_| json!({"memory_id": a})).collect();
    let (s, _) = w
        .call(&rw, "DELETE", "/v1/batch/", Some(json!({"memories": many})))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "over 1000 is refused");

    let (s, r) = w
        .call(
            &rw,
            "DELETE",
            "/v1/batch/",
            Some(json!({"memories": [{"memory_id": a}, {"memory_id": b}]})),
        )
        .await;
    assert_eq!(
        (s, r["message"].as_str()),
        (StatusCode::OK, Some("Successfully deleted 2 memories"))
    );
    for id in [&a, &b] {
        let (s, _) = w
            .call(&rw, "GET", &format!("/v1/memories/{id}"), None)
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }

    // A Mem0 method Engram does not serve says so in Mem0's shape.
    let (s, r) = w
        .call(&rw, "POST", "/v1/exports/", Some(json!({"schema": "{}"})))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(
        r["detail"].as_str().unwrap().contains("does not serve"),
        "{r}"
    );
}
