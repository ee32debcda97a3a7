//! Webhooks end to end: the REST routes over the real router and store, a
//! real HTTP receiver on loopback, and the job runner delivering. Signature
//! verification, retries after a 500, dead letters and disabling, ordering
//! per memory, nothing for a rolled-back write, one delivery with two nodes
//! on one store, the SSRF guard (including a name that resolves to
//! 127.0.0.1), and bindings. SQLite, and Postgres with
//! `ENGRAM_TEST_STORE=postgres`.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use engram_core::access::{Principal, Role};
use engram_core::clock::SystemClock;
use engram_core::ctx::RequestCtx;
use engram_core::memory::{Scope, ScopeField};
use engram_core::ports::WriteOp;
use engram_core::service::{
    AddInput, Content, JobConfig, JobRunner, KeyService, MemoryService, UpdateInput,
};
use engram_server::webhook_send::HttpSender;
use engram_server::{AppState, ServerConfig, app};
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sha2::Sha256;
use tower::ServiceExt;

#[path = "../common/mod.rs"]
mod common;
mod delivery;
mod guard;

/// What the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    headers: HeaderMap,
    body: String,
    status: u16,
}

/// A webhook receiver on loopback: records every request and answers with
/// the next scripted status (200 when the script is empty).
#[derive(Clone, Default)]
pub struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<VecDeque<u16>>>,
    always: Arc<Mutex<Option<u16>>>,
    /// How long the receiver takes to answer.
    delay: Arc<Mutex<Duration>>,
}

impl Receiver {
    async fn start() -> (Receiver, String) {
        let r = Receiver::default();
        let state = r.clone();
        let router = Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let r = state.clone();
                async move {
                    let delay = *r.delay.lock().unwrap();
                    tokio::time::sleep(delay).await;
                    let status = r
                        .always
                        .lock()
                        .unwrap()
                        .or_else(|| r.script.lock().unwrap().pop_front())
                        .unwrap_or(200);
                    r.got.lock().unwrap().push(Received {
                        headers,
                        body,
                        status,
                    });
                    StatusCode::from_u16(status).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        (r, format!("http://{addr}/hook"))
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    fn bodies(&self) -> Vec<Value> {
        self.got()
            .iter()
            .map(|r| serde_json::from_str(&r.body).unwrap())
            .collect()
    }
}

pub struct World {
    router: Router,
    memory: MemoryService,
    keys: KeyService,
    state: AppState,
    store: common::Opened,
    _dir: tempfile::TempDir,
}

pub fn jobs_fast() -> JobConfig {
    JobConfig {
        backoff_base: Duration::from_millis(1),
        backoff_max: Duration::from_millis(5),
        ..JobConfig::default()
    }
}

pub fn config(allow_private: bool, max_failures: u32) -> ServerConfig {
    ServerConfig {
        workers: 0,
        jobs: jobs_fast(),
        webhooks: engram_core::service::WebhookConfig {
            allow_private,
            max_failures,
            timeout: Duration::from_secs(5),
        },
        ..ServerConfig::default()
    }
}

pub async fn world(config: ServerConfig) -> World {
    let dir = tempfile::tempdir().unwrap();
    let (store, memory) = common::open(dir.path()).await;
    let keys = KeyService::new(store.keys(), Arc::new(SystemClock));
    let state = AppState::new(memory.clone(), keys.clone(), config);
    World {
        router: app(state.clone()),
        memory,
        keys,
        state,
        store,
        _dir: dir,
    }
}

pub fn scope(org: &str, user: &str) -> Scope {
    Scope {
        org_id: Some(org.into()),
        user_id: Some(user.into()),
        ..Default::default()
    }
}

pub fn org(org: &str) -> Scope {
    Scope {
        org_id: Some(org.into()),
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

    async fn add(&self, text: &str, scope: Scope) -> uuid::Uuid {
        let r = self
            .memory
            .add(
                &RequestCtx::operator("test"),
                AddInput::new(Content::Text(text.into()), scope),
            )
            .await
            .unwrap();
        r[0].id
    }

    fn runner(&self, name: &str) -> JobRunner {
        JobRunner::new(self.memory.clone(), jobs_fast(), name)
            .with_webhooks(Some(self.state.webhooks.clone()))
    }

    /// Runs deliveries until none is queued or running (retries included).
    async fn drain(&self, runner: &JobRunner) {
        for _ in 0..2000 {
            if !runner.run_once().await.unwrap()
                && self.memory.store().webhook_pending().await.unwrap() == 0
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("deliveries did not drain");
    }
}

/// Verifies a delivery's signature as a receiver would (Standard Webhooks).
pub fn verify(secret: &str, r: &Received) -> bool {
    let h = |n: &str| r.headers.get(n).unwrap().to_str().unwrap().to_owned();
    let key = B64.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.{}", h("webhook-id"), h("webhook-timestamp"), r.body).as_bytes());
    let expected = format!("v1,{}", B64.encode(mac.finalize().into_bytes()));
    h("webhook-signature").split(' ').any(|s| s == expected)
}
