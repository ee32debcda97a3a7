//! Setup shared by the server's integration tests: a real store — SQLite in
//! a directory of the test's, or, with `ENGRAM_TEST_STORE=postgres`, a fresh
//! database on the throwaway Postgres (`make test` runs these tests both
//! ways) — and the real embedding model (loaded once per test binary).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use engram_core::clock::SystemClock;
use engram_core::config::{IngestConfig, RetrievalConfig};
use engram_core::ports::KeyStore;
use engram_core::ports::Store;
use engram_core::service::MemoryService;
use engram_embed::BertEmbedder;
use engram_sqlite::{SqliteOptions, SqliteStore};

pub fn embedder() -> Arc<BertEmbedder> {
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

/// Whether this run's store is Postgres (`ENGRAM_TEST_STORE=postgres`).
#[allow(dead_code)] // not every test binary asks
pub fn postgres() -> bool {
    std::env::var("ENGRAM_TEST_STORE").is_ok_and(|s| s == "postgres")
}

/// The run's store (in `dir` for SQLite) as its key store too.
pub struct Opened {
    pub store: Arc<dyn Store>,
}

impl Opened {
    #[allow(dead_code)] // not every test binary asks
    pub fn keys(&self) -> Arc<dyn KeyStore> {
        self.store.clone()
    }
}

/// A memory service with default settings over `store` (another node, when
/// the store is shared).
pub async fn service(store: Arc<dyn Store>) -> MemoryService {
    MemoryService::new(
        store,
        embedder(),
        RetrievalConfig::default(),
        IngestConfig::default(),
        1000,
        Arc::new(SystemClock),
    )
    .await
    .unwrap()
}

/// A store and the memory service over it, with default settings.
pub async fn open(dir: &Path) -> (Opened, MemoryService) {
    let store: Arc<dyn Store> = if postgres() {
        let url = engram_testkit::pg::fresh_database().await;
        Arc::new(
            engram_postgres::PgStore::connect(&url, engram_postgres::PgOptions::default())
                .await
                .unwrap(),
        )
    } else {
        Arc::new(
            SqliteStore::open_async(dir.to_owned(), SqliteOptions::default())
                .await
                .unwrap(),
        )
    };
    let memory = service(store.clone()).await;
    (Opened { store }, memory)
}

/// A server over a fresh store: its router, service and key service.
#[allow(dead_code)] // not every test binary asks
pub struct Node {
    pub router: axum::Router,
    pub memory: MemoryService,
    pub keys: engram_core::service::KeyService,
    pub store: Opened,
    _dir: tempfile::TempDir,
}

/// A [`Node`] authenticating with `auth`, with `state` applied to its
/// application state (e.g. a model loader) before the router is built.
#[allow(dead_code)] // not every test binary asks
pub async fn node_with(
    auth: engram_server::auth::AuthMode,
    state: impl FnOnce(engram_server::AppState) -> engram_server::AppState,
) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let (store, memory) = open(dir.path()).await;
    let keys = engram_core::service::KeyService::new(store.keys(), Arc::new(SystemClock));
    let config = engram_server::ServerConfig {
        auth,
        ..engram_server::ServerConfig::default()
    };
    let router = engram_server::app(state(engram_server::AppState::new(
        memory.clone(),
        keys.clone(),
        config,
    )));
    Node {
        router,
        memory,
        keys,
        store,
        _dir: dir,
    }
}

/// A waiting strategy that never waits (LLM client retries in tests).
struct NoSleep;

#[async_trait::async_trait]
impl engram_llm::Sleeper for NoSleep {
    async fn sleep(&self, _: std::time::Duration) {}
}

/// The LLM pipeline over `memory`, its model a scripted OpenAI-compatible
/// server on a real socket: no client retries and a breaker that stays
/// closed, then whatever `tweak` changes.
#[allow(dead_code)] // not every test binary asks
pub async fn scripted_pipeline(
    memory: &MemoryService,
    tweak: impl FnOnce(&mut engram_llm::ClientConfig),
) -> (engram_testkit::ScriptedLlm, engram_core::pipeline::Pipeline) {
    let llm = engram_testkit::ScriptedLlm::start().await;
    let mut cfg = engram_llm::ClientConfig::new(llm.url(), "scripted");
    cfg.max_retries = 0;
    cfg.breaker_threshold = 100;
    tweak(&mut cfg);
    let chat = engram_llm::OpenAiChat::new(cfg, Arc::new(NoSleep), Arc::new(SystemClock)).unwrap();
    let pipeline = engram_core::pipeline::Pipeline::new(memory.clone(), Arc::new(chat));
    (llm, pipeline)
}

/// A new API key with `role` bound to `binding`, made by the operator.
#[allow(dead_code)] // not every test binary asks
pub async fn key(
    keys: &engram_core::service::KeyService,
    binding: engram_core::memory::Scope,
    role: engram_core::access::Role,
) -> String {
    let new = engram_core::service::NewKey {
        name: "test".into(),
        role: Some(role),
        binding,
        rate_limit: None,
    };
    keys.create(&engram_core::access::Principal::operator(), new)
        .await
        .unwrap()
        .1
}

/// One request through `router` as `key`, with an optional JSON body; the
/// status and the JSON answer (`null` when it is not JSON).
#[allow(dead_code)] // not every test binary asks
pub async fn call(
    router: &axum::Router,
    key: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (axum::http::StatusCode, serde_json::Value) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let mut req = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {key}"));
    let body = match body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            axum::body::Body::from(b.to_string())
        }
        None => axum::body::Body::empty(),
    };
    let resp = router
        .clone()
        .oneshot(req.body(body).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}
