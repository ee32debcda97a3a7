//! Re-embedding with real stores and real models: the "next" model is the
//! same weights under another directory name (so another model id — what
//! matters to the store). A gate in front of it lets the test hold the run
//! between batches: searches meanwhile answer from the old vectors exactly as
//! before, writes keep landing and are caught up, and after the switch the
//! service embeds with the new model. An interrupted run resumes where it
//! stopped. Runs on SQLite, and on Postgres with `ENGRAM_TEST_STORE=postgres`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use engram_core::access::Role;
use engram_core::ctx::RequestCtx;
use engram_core::memory::Scope;
use engram_core::ports::Embedder;
use engram_core::ports::ModelInfo;
use engram_core::service::NewKey;
use engram_core::service::{AddInput, Content, MemoryService, SearchInput};
use engram_core::{Error, ErrorCode};
use engram_embed::BertEmbedder;
use engram_server::auth::AuthMode;
use engram_server::reembed::ModelLoader;
use engram_server::{AppState, ServerConfig, app};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tower::ServiceExt;

mod common;

/// The default model's files under another directory name: another model id.
fn next_model_dir(root: &Path) -> PathBuf {
    engram_testkit::model_alias(&engram_embed::default_model_dir(), root, "minilm-next")
}

/// The next model behind a gate: each batch takes a permit; after
/// `fail_after` batches it fails (a crash mid-run).
struct Gated {
    inner: Arc<BertEmbedder>,
    permits: Arc<Semaphore>,
    calls: AtomicUsize,
    fail_after: Option<usize>,
}

#[async_trait]
impl Embedder for Gated {
    fn model(&self) -> &ModelInfo {
        self.inner.model()
    }

    async fn embed(&self, texts: &[String]) -> engram_core::Result<Vec<Vec<f32>>> {
        self.permits
            .acquire()
            .await
            .map_err(|_| Error::embedder("gate closed"))?
            .forget();
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail_after.is_some_and(|k| n >= k) {
            return Err(Error::embedder("the model went away"));
        }
        self.inner.embed(texts).await
    }

    fn count_tokens(&self, text: &str) -> usize {
        self.inner.count_tokens(text)
    }
}

fn gated(dir: &Path, permits: usize, fail_after: Option<usize>) -> Arc<Gated> {
    Arc::new(Gated {
        inner: Arc::new(BertEmbedder::load(dir).unwrap()),
        permits: Arc::new(Semaphore::new(permits)),
        calls: AtomicUsize::new(0),
        fail_after,
    })
}

use common::Node;

async fn node(loader: Option<ModelLoader>) -> Node {
    common::node_with(AuthMode::Keys, |state| match loader {
        Some(loader) => state.with_model_loader(loader),
        None => state,
    })
    .await
}

fn ctx() -> RequestCtx {
    RequestCtx::operator("test")
}

fn ann() -> Scope {
    Scope {
        org_id: Some("acme".into()),
        user_id: Some("ann".into()),
        ..Default::default()
    }
}

const FACTS: [&str; 6] = [
    "Ann drinks oat milk flat whites",
    "Ann is training for the Lyon marathon",
    "Ann's sister Maud lives in Quebec",
    "Ann keeps two cats, Miso and Tofu",
    "Ann works as a glassblower",
    "Ann is allergic to peanuts",
];

/// A plain semantic memory of ann's.
fn fact(text: &str) -> AddInput {
    AddInput::new(Content::Text(text.into()), ann())
}

async fn add(memory: &MemoryService, text: &str) -> uuid::Uuid {
    memory.add(&ctx(), fact(text)).await.unwrap()[0].id
}

fn search_input(query: &str) -> SearchInput {
    SearchInput {
        query: query.into(),
        filter: engram_core::filter::Filter::from_scope(&ann()),
        top_k: Some(10),
        threshold: None,
        token_budget: Some(0),
        explain: true,
    }
}

/// The hits' ids and fused scores: the scores before recency decay, which
/// moves with the real clock between two searches (in the last bit of an f32).
async fn search(memory: &MemoryService, query: &str) -> Vec<(uuid::Uuid, f32)> {
    memory
        .search(&ctx(), search_input(query))
        .await
        .unwrap()
        .hits
        .iter()
        .map(|h| {
            let why = h.explanation.as_ref().expect("explain: true");
            (h.memory.id, why.signals.fused)
        })
        .collect()
}

async fn key(n: &Node, role: Role) -> String {
    let new = NewKey {
        name: format!("{} key", role.as_str()),
        role: Some(role),
        binding: Scope {
            org_id: Some("acme".into()),
            ..Default::default()
        },
        rate_limit: None,
    };
    n.keys.create(&ctx().principal, new).await.unwrap().1
}

async fn call(n: &Node, req: Request<Body>, key: &str) -> (StatusCode, Value) {
    let mut req = req;
    let v = format!("Bearer {key}").parse().unwrap();
    req.headers_mut().insert(header::AUTHORIZATION, v);
    let res = n.router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn post(body: Value) -> Request<Body> {
    Request::post("/v1/admin/reembed")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn get() -> Request<Body> {
    Request::get("/v1/admin/reembed")
        .body(Body::empty())
        .unwrap()
}

/// Polls `GET /v1/admin/reembed` until `pred` holds (bounded: the run is real work).
async fn wait_for(n: &Node, key: &str, pred: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..600 {
        let (status, body) = call(n, get(), key).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if pred(&body) {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the re-embedding never reached the expected state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_old_vectors_until_the_switch() {
    let dir = tempfile::tempdir().unwrap();
    let next_dir = next_model_dir(dir.path());
    let next = gated(&next_dir, 1, None);
    let loader: ModelLoader = {
        let (next, next_dir) = (next.clone(), next_dir.clone());
        Arc::new(move |req| {
            let (next, next_dir) = (next.clone(), next_dir.clone());
            Box::pin(async move {
                if Path::new(&req.model) == next_dir {
                    Ok(next as Arc<dyn Embedder>)
                } else {
                    Err(format!("no model at {}", req.model))
                }
            })
        })
    };
    let n = node(Some(loader)).await;
    let old_model = n.memory.embedder().model().clone();
    for f in FACTS {
        add(&n.memory, f).await;
    }
    let before = search(&n.memory, "what milk does Ann like").await;
    assert_eq!(before.len(), 6);
    let admin = key(&n, Role::Operator).await;
    let org_admin = key(&n, Role::Admin).await;
    let writer = key(&n, Role::ReadWrite).await;
    let model = next_dir.to_str().unwrap();
    // Another node on the same store, which keeps the old model.
    let stale = common::service(n.store.store.clone()).await;
    let stale_app = app(AppState::new(
        stale.clone(),
        n.keys.clone(),
        ServerConfig::default(),
    ));

    // Refusals change nothing.
    for k in [&writer, &org_admin] {
        let (status, body) = call(&n, post(json!({"model": model})), k).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "an org's keys cannot: {body}"
        );
        let (status, _) = call(&n, get(), k).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    let (status, body) = call(&n, post(json!({"model": model, "batch": 0})), &admin).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("batch"), "{body}");
    let (status, body) = call(&n, post(json!({"model": "/nowhere"})), &admin).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("cannot load the model"),
        "{body}"
    );
    let (status, body) = call(&n, post(json!({"modle": model})), &admin).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (_, idle) = call(&n, get(), &admin).await;
    assert_eq!(idle["state"], "idle");
    assert_eq!(idle["from"]["id"], old_model.id.as_str());

    // Two texts per batch, one batch allowed through: the run holds after it.
    let (status, body) = call(&n, post(json!({"model": model, "batch": 2})), &admin).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["state"], "running");
    assert_eq!(body["to"]["id"].as_str(), Some(next.model().id.as_str()));
    let held = wait_for(&n, &admin, |s| s["done"] == 2).await;
    assert_eq!(
        (held["state"].as_str(), held["total"].as_u64()),
        (Some("running"), Some(6))
    );
    let (status, body) = call(&n, post(json!({"model": model})), &admin).await;
    assert_eq!(status, StatusCode::CONFLICT, "one run at a time: {body}");

    // Meanwhile: the old model and the old vectors, exactly.
    assert_eq!(n.memory.embedder().model(), &old_model);
    assert_eq!(search(&n.memory, "what milk does Ann like").await, before);
    assert_eq!(search(&stale, "what milk does Ann like").await, before);
    let late = add(&n.memory, "Ann started learning the cello").await;

    // Let it finish: every version, the late one too, then the switch.
    next.permits.add_permits(1000);
    let done = wait_for(&n, &admin, |s| s["state"] != "running").await;
    assert_eq!(done["state"], "switched", "{done}");
    assert_eq!(done["total"], 7);
    assert_eq!(n.memory.embedder().model(), next.model());
    let (status, health) = call(
        &n,
        Request::get("/readyz").body(Body::empty()).unwrap(),
        &admin,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        health["checks"]["embedder"]["model"],
        next.model().id.as_str(),
        "{health}"
    );

    // Same weights, so the same ranking and scores from the new vectors —
    // and the late write is found by its new vector.
    let mut after = search(&n.memory, "what milk does Ann like").await;
    after.retain(|h| h.0 != late);
    assert_eq!(
        after.iter().map(|h| h.0).collect::<Vec<_>>(),
        before.iter().map(|h| h.0).collect::<Vec<_>>()
    );
    // The node keeps vectors in half precision: a cosine moves by < 1e-3
    // between two embeddings of one text, so scores agree to that.
    for (a, b) in after.iter().zip(&before) {
        assert!((a.1 - b.1).abs() < 2e-3, "{after:?} vs {before:?}");
    }
    assert_eq!(
        search(&n.memory, "which instrument is Ann learning").await[0].0,
        late
    );
    let versions = n.memory.store().memory_versions(&[late]).await.unwrap();
    assert_eq!(versions[0].0.embedding_model, next.model().id);
    // Writes now carry the new model.
    let fresh = add(&n.memory, "Ann moved to a flat near the river").await;
    let got = n.memory.store().memory_versions(&[fresh]).await.unwrap();
    assert_eq!(got[0].0.embedding_model, next.model().id);
    let (_, idle) = call(&n, get(), &admin).await;
    assert_eq!(idle["state"], "switched");

    // The node still on the old model is not ready and cannot write with it.
    let res = stale_app
        .clone()
        .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let detail = body["checks"]["embedder"]["detail"].as_str().unwrap();
    assert!(detail.contains("restart this node"), "{body}");
    // Nor search: it checks the store's model at most once a second (its last
    // search saw a match), then refuses rather than rank old-model queries
    // against new-model vectors.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let err = loop {
        match stale
            .search(&ctx(), search_input("what milk does Ann like"))
            .await
        {
            Err(e) => break e,
            Ok(_) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the stale node kept searching"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(err.code, ErrorCode::EmbeddingModelMismatch, "{err:?}");
    assert!(err.message.contains("restart this node"), "{err:?}");
    let req = Request::post("/v1/memories/search")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, format!("Bearer {writer}"))
        .body(Body::from(
            json!({"query": "what milk does Ann like", "user_id": "ann"}).to_string(),
        ))
        .unwrap();
    let res = stale_app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let body: Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["code"], "embedding_model_mismatch", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains(next.model().id.as_str()),
        "names the model to restart with: {body}"
    );
    let err = stale
        .add(&ctx(), fact("Ann repaints her kitchen"))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::ModelSwitched, "{err:?}");
    // Over HTTP: 409 model_switched with Retry-After, and never replayed
    // under its idempotency key (the retry must run again).
    for _ in 0..2 {
        let req = Request::post("/v1/memories")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {writer}"))
            .header("idempotency-key", "stale-1")
            .body(Body::from(
                json!({"text": "Ann repaints her kitchen", "user_id": "ann"}).to_string(),
            ))
            .unwrap();
        let res = stale_app.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::CONFLICT);
        assert_eq!(res.headers()[header::RETRY_AFTER], "1");
        assert!(!res.headers().contains_key("idempotent-replayed"));
        let body: Value =
            serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(body["code"], "model_switched", "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let next_dir = next_model_dir(dir.path());
    let n = node(None).await;
    for f in FACTS {
        add(&n.memory, f).await;
    }
    let before = search(&n.memory, "who lives in Quebec").await;
    let old_model = n.memory.embedder().model().clone();

    // The model fails on its third batch: two batches (4 versions) are kept.
    let broken = gated(&next_dir, 1000, Some(2));
    let seen = std::sync::Mutex::new(Vec::new());
    let err = n
        .memory
        .reembed(&ctx(), broken.clone(), 2, &|s| {
            seen.lock().unwrap().push(s.done)
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::EmbedderFailure);
    assert_eq!(*seen.lock().unwrap(), vec![0, 2, 4]);
    let paused = n.memory.reembed_state(&ctx()).await.unwrap().unwrap();
    assert_eq!((paused.done, paused.total), (4, 6));
    assert_eq!(n.memory.embedder().model(), &old_model);
    assert_eq!(search(&n.memory, "who lives in Quebec").await, before);

    // No other model can start over it.
    let other = BertEmbedder::load(&engram_embed::default_model_dir()).unwrap();
    let err = n
        .memory
        .reembed(&ctx(), Arc::new(other), 2, &|_| {})
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Conflict, "{err:?}");
    assert!(err.message.contains("4 of 6 versions"), "{err:?}");

    // Again, with a working model: only the rest is embedded.
    let working = gated(&next_dir, 1000, None);
    let report = n
        .memory
        .reembed(&ctx(), working.clone(), 2, &|_| {})
        .await
        .unwrap();
    assert_eq!(
        (report.resumed, report.embedded, report.versions),
        (4, 2, 6)
    );
    assert_eq!(working.calls.load(Ordering::SeqCst), 1);
    assert_eq!(n.memory.embedder().model(), working.model());
    assert_eq!(n.memory.reembed_state(&ctx()).await.unwrap(), None);
    let after = search(&n.memory, "who lives in Quebec").await;
    assert_eq!(after[0].0, before[0].0);

    // Audited once, with who did it.
    let events = n
        .memory
        .audit(
            &ctx(),
            engram_core::ports::AuditQuery {
                action: Some("reembed".into()),
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
}
