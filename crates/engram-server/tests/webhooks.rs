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
    AddInput, Content, JobConfig, JobRunner, KeyService, MemoryService, NewKey, UpdateInput,
};
use engram_server::webhook_send::HttpSender;
use engram_server::{AppState, ServerConfig, app};
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sha2::Sha256;
use tower::ServiceExt;

mod common;

/// What the receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: String,
    status: u16,
}

/// A webhook receiver on loopback: records every request and answers with
/// the next scripted status (200 when the script is empty).
#[derive(Clone, Default)]
struct Receiver {
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

struct World {
    router: Router,
    memory: MemoryService,
    keys: KeyService,
    state: AppState,
    store: common::Opened,
    _dir: tempfile::TempDir,
}

fn jobs_fast() -> JobConfig {
    JobConfig {
        backoff_base: Duration::from_millis(1),
        backoff_max: Duration::from_millis(5),
        ..JobConfig::default()
    }
}

fn config(allow_private: bool, max_failures: u32) -> ServerConfig {
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
        store,
        _dir: dir,
    }
}

fn scope(org: &str, user: &str) -> Scope {
    Scope {
        org_id: Some(org.into()),
        user_id: Some(user.into()),
        ..Default::default()
    }
}

fn org(org: &str) -> Scope {
    Scope {
        org_id: Some(org.into()),
        ..Default::default()
    }
}

impl World {
    async fn key(&self, binding: Scope, role: Role) -> String {
        let new = NewKey {
            name: "hooks".into(),
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

    async fn call(
        &self,
        key: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {key}"));
        let body = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        let resp = self
            .router
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
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
fn verify(secret: &str, r: &Received) -> bool {
    let h = |n: &str| r.headers.get(n).unwrap().to_str().unwrap().to_owned();
    let key = B64.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.{}", h("webhook-id"), h("webhook-timestamp"), r.body).as_bytes());
    let expected = format!("v1,{}", B64.encode(mac.finalize().into_bytes()));
    h("webhook-signature").split(' ').any(|s| s == expected)
}

#[tokio::test]
async fn every_change_is_delivered_signed_in_order_and_only_inside_the_scope() {
    let w = world(config(true, 20)).await;
    let (recv, url) = Receiver::start().await;
    let admin = w.key(org("acme"), Role::Admin).await;
    let (s, created) = w
        .call(
            &admin,
            "POST",
            "/v1/webhooks",
            Some(json!({"url": url, "events": ["memory.created", "memory.updated", "memory.deleted"], "description": "crm sync"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["scope"]["org_id"], "acme", "bound to the key's org");

    // Listed and read without the secret.
    let (_, list) = w.call(&admin, "GET", "/v1/webhooks", None).await;
    assert_eq!(list["results"].as_array().unwrap().len(), 1);
    assert!(!list.to_string().contains(&secret), "{list}");
    let (_, one) = w
        .call(&admin, "GET", &format!("/v1/webhooks/{id}"), None)
        .await;
    assert!(one.get("secret").is_none());

    let mem = w
        .add("Alice moved to Lisbon in May.", scope("acme", "u1"))
        .await;
    w.add("Someone else's memory.", scope("globex", "u9")).await;
    w.memory
        .update(
            &RequestCtx::operator("test"),
            mem,
            UpdateInput {
                text: Some("Alice moved to Porto in May.".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    w.memory
        .delete(&RequestCtx::operator("test"), mem)
        .await
        .unwrap();
    let runner = w.runner("w1");
    w.drain(&runner).await;

    let got = recv.got();
    assert_eq!(
        got.len(),
        3,
        "globex's memory is outside the webhook: {got:?}"
    );
    for r in &got {
        assert!(verify(&secret, r), "signature of {}", r.body);
        assert!(
            r.headers["webhook-id"]
                .to_str()
                .unwrap()
                .starts_with("msg_")
        );
        assert_eq!(r.headers["content-type"], "application/json");
    }
    let bodies = recv.bodies();
    let types: Vec<&str> = bodies.iter().map(|b| b["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["memory.created", "memory.updated", "memory.deleted"]
    );
    assert_eq!(bodies[0]["data"]["id"], mem.to_string());
    assert_eq!(bodies[0]["data"]["text"], "Alice moved to Lisbon in May.");
    assert_eq!(bodies[0]["data"]["user_id"], "u1");
    assert_eq!(bodies[1]["data"]["version"], 2);
    assert_eq!(
        bodies[1]["data"]["previous_text"],
        "Alice moved to Lisbon in May."
    );
    assert_eq!(bodies[1]["data"]["text"], "Alice moved to Porto in May.");
    assert!(bodies[0]["timestamp"].as_str().unwrap().ends_with('Z'));

    // A tampered body or another secret does not verify.
    let mut forged = got[0].clone();
    forged.body = forged.body.replace("Lisbon", "Paris");
    assert!(!verify(&secret, &forged));

    // The attempts, newest first.
    let (s, deliveries) = w
        .call(
            &admin,
            "GET",
            &format!("/v1/webhooks/{id}/deliveries"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let d = deliveries["results"].as_array().unwrap();
    assert_eq!(d.len(), 3);
    assert!(
        d.iter()
            .all(|a| a["outcome"] == "delivered" && a["status_code"] == 200)
    );
    assert_eq!(d[0]["event"], "memory.deleted");

    // Rotation: the new secret signs, the old one no longer does.
    let (s, rotated) = w
        .call(
            &admin,
            "POST",
            &format!("/v1/webhooks/{id}/rotate-secret"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let new_secret = rotated["secret"].as_str().unwrap();
    assert_ne!(new_secret, secret);
    w.add("Bob likes tea.", scope("acme", "u2")).await;
    w.drain(&runner).await;
    let last = recv.got().pop().unwrap();
    assert!(verify(new_secret, &last) && !verify(&secret, &last));

    // Text can be kept out of payloads.
    let (s, _) = w
        .call(
            &admin,
            "PATCH",
            &format!("/v1/webhooks/{id}"),
            Some(json!({"include_text": false})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    w.add("Carol's secret diagnosis.", scope("acme", "u3"))
        .await;
    // A worker that cannot send webhooks (the CLI's) leaves the delivery alone.
    let cli = JobRunner::new(w.memory.clone(), jobs_fast(), "cli");
    assert!(!cli.run_once().await.unwrap(), "no delivery claimed");
    assert_eq!(w.memory.store().webhook_pending().await.unwrap(), 1);
    w.drain(&runner).await;
    let last = recv.got().pop().unwrap();
    assert!(!last.body.contains("diagnosis"), "{}", last.body);
    assert!(
        verify(new_secret, &last),
        "a settings change after the rotation kept the new secret"
    );
    // Delivered: the queue keeps no memory text, and /v1/jobs shows no delivery.
    let jobs = w.memory.store().job_list(None, 1000).await.unwrap();
    let deliveries: Vec<_> = jobs.iter().filter(|j| j.kind == "webhook").collect();
    assert_eq!(deliveries.len(), 5);
    for j in &deliveries {
        assert_eq!(j.payload, json!({}), "{j:?}");
        let (s, _) = w
            .call(&admin, "GET", &format!("/v1/jobs/{}", j.id), None)
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }

    // Deleted: nothing more arrives.
    let (s, _) = w
        .call(&admin, "DELETE", &format!("/v1/webhooks/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let before = recv.got().len();
    w.add("After deletion.", scope("acme", "u1")).await;
    w.drain(&runner).await;
    assert_eq!(recv.got().len(), before);
    let (s, _) = w
        .call(&admin, "GET", &format!("/v1/webhooks/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_failing_receiver_is_retried_then_dead_lettered_and_the_webhook_disabled() {
    let w = world(config(true, 4)).await;
    let (recv, url) = Receiver::start().await;
    let admin = w.key(org("acme"), Role::Admin).await;
    let (_, hook) = w
        .call(
            &admin,
            "POST",
            "/v1/webhooks",
            Some(json!({"url": url, "events": ["memory.created"]})),
        )
        .await;
    let id = hook["id"].as_str().unwrap().to_owned();
    let runner = w.runner("w1");

    // Two 500s, then accepted: delivered on the third attempt, same webhook-id each time.
    recv.script.lock().unwrap().extend([500, 503]);
    w.add("Retried until delivered.", scope("acme", "u1")).await;
    w.drain(&runner).await;
    let got = recv.got();
    assert_eq!(
        got.iter().map(|r| r.status).collect::<Vec<_>>(),
        [500, 503, 200]
    );
    let ids: Vec<_> = got
        .iter()
        .map(|r| r.headers["webhook-id"].clone())
        .collect();
    assert!(ids.windows(2).all(|p| p[0] == p[1]), "{ids:?}");
    let (_, d) = w
        .call(
            &admin,
            "GET",
            &format!("/v1/webhooks/{id}/deliveries"),
            None,
        )
        .await;
    let outcomes: Vec<&str> = d["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["delivered", "failed", "failed"]);
    let (_, h) = w
        .call(&admin, "GET", &format!("/v1/webhooks/{id}"), None)
        .await;
    assert_eq!(h["consecutive_failures"], 0, "a delivery resets the count");

    // A 4xx other than 408/429 is not retried, nor is a redirect (never followed).
    recv.script.lock().unwrap().push_back(410);
    w.add("Refused by the receiver.", scope("acme", "u1")).await;
    w.drain(&runner).await;
    assert_eq!(recv.got().last().unwrap().status, 410);
    recv.script.lock().unwrap().push_back(302);
    w.add("Redirected by the receiver.", scope("acme", "u1"))
        .await;
    w.drain(&runner).await;
    let n = recv.got().len();
    assert_eq!(recv.got()[n - 1].status, 302);
    let (_, d) = w
        .call(
            &admin,
            "GET",
            &format!("/v1/webhooks/{id}/deliveries?limit=2"),
            None,
        )
        .await;
    let last = &d["results"][0];
    assert_eq!(last["outcome"], "dead", "{d}");
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("redirects are not followed"),
        "{d}"
    );
    assert_eq!(d["results"][1]["status_code"], 410);

    // Always failing: after 4 failures in a row the webhook is disabled and
    // its delivery dead; later changes queue nothing.
    *recv.always.lock().unwrap() = Some(500);
    w.add("Never delivered.", scope("acme", "u1")).await;
    w.drain(&runner).await;
    // 410 and 302 were the first two failures in a row: two more 500s disable it.
    assert_eq!(recv.got().len(), n + 2);
    let (_, h) = w
        .call(&admin, "GET", &format!("/v1/webhooks/{id}"), None)
        .await;
    assert_eq!(h["enabled"], false, "{h}");
    assert!(
        h["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("4 delivery attempts failed"),
        "{h}"
    );
    let (_, d) = w
        .call(
            &admin,
            "GET",
            &format!("/v1/webhooks/{id}/deliveries?limit=1"),
            None,
        )
        .await;
    assert_eq!(d["results"][0]["outcome"], "dead");
    w.add("After disabling.", scope("acme", "u1")).await;
    assert_eq!(w.memory.store().webhook_pending().await.unwrap(), 0);
    // Changing a setting does not re-enable it (only `enabled: true` does).
    let (s, h) = w
        .call(
            &admin,
            "PATCH",
            &format!("/v1/webhooks/{id}"),
            Some(json!({"description": "still off"})),
        )
        .await;
    assert_eq!((s, &h["enabled"]), (StatusCode::OK, &json!(false)), "{h}");

    // Re-enabled: deliveries resume.
    *recv.always.lock().unwrap() = None;
    let (s, h) = w
        .call(
            &admin,
            "PATCH",
            &format!("/v1/webhooks/{id}"),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(
        (s, &h["enabled"], &h["consecutive_failures"]),
        (StatusCode::OK, &json!(true), &json!(0))
    );
    w.add("Delivered again.", scope("acme", "u1")).await;
    w.drain(&runner).await;
    assert_eq!(recv.got().last().unwrap().status, 200);
}

#[tokio::test]
async fn a_slow_receiver_times_out_and_is_retried() {
    let mut cfg = config(true, 20);
    cfg.webhooks.timeout = Duration::from_millis(200);
    let w = world(cfg).await;
    let (recv, url) = Receiver::start().await;
    let admin = w.key(org("acme"), Role::Admin).await;
    let (_, hook) = w
        .call(
            &admin,
            "POST",
            "/v1/webhooks",
            Some(json!({"url": url, "events": ["memory.created"]})),
        )
        .await;
    *recv.delay.lock().unwrap() = Duration::from_millis(600);
    w.add("Slow to land.", scope("acme", "u1")).await;
    let runner = w.runner("w");
    assert!(runner.run_once().await.unwrap());
    *recv.delay.lock().unwrap() = Duration::ZERO;
    w.drain(&runner).await;
    let (_, d) = w
        .call(
            &admin,
            "GET",
            &format!("/v1/webhooks/{}/deliveries", hook["id"].as_str().unwrap()),
            None,
        )
        .await;
    let d = d["results"].as_array().unwrap();
    assert_eq!(d.len(), 2, "{d:?}");
    assert_eq!(
        (d[0]["outcome"].as_str(), d[1]["outcome"].as_str()),
        (Some("delivered"), Some("failed"))
    );
    assert!(
        d[1]["error"].as_str().unwrap().contains("timed out"),
        "{d:?}"
    );
    assert!(d[1]["status_code"].is_null());
}

#[tokio::test]
async fn a_memorys_events_wait_for_the_one_before() {
    let w = world(config(true, 20)).await;
    let (recv, url) = Receiver::start().await;
    let admin = w.key(org("acme"), Role::Admin).await;
    w.call(
        &admin,
        "POST",
        "/v1/webhooks",
        Some(json!({"url": url, "events": ["memory.created", "memory.updated"]})),
    )
    .await;
    recv.script.lock().unwrap().push_back(500);
    let mem = w.add("Version one.", scope("acme", "u1")).await;
    w.memory
        .update(
            &RequestCtx::operator("test"),
            mem,
            UpdateInput {
                text: Some("Version two.".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // Two workers: the update is due at once, the create waits for its retry.
    let (a, b) = (w.runner("a"), w.runner("b"));
    for _ in 0..500 {
        let ran = a.run_once().await.unwrap() | b.run_once().await.unwrap();
        if !ran && w.memory.store().webhook_pending().await.unwrap() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let seen: Vec<(u16, String)> = recv
        .got()
        .iter()
        .map(|r| {
            let b: Value = serde_json::from_str(&r.body).unwrap();
            (r.status, b["type"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(
        seen,
        [
            (500, "memory.created".to_owned()),
            (200, "memory.created".to_owned()),
            (200, "memory.updated".to_owned())
        ]
    );
}

#[tokio::test]
async fn a_write_that_rolls_back_announces_nothing() {
    let w = world(config(true, 20)).await;
    let (recv, url) = Receiver::start().await;
    let admin = w.key(org("acme"), Role::Admin).await;
    w.call(
        &admin,
        "POST",
        "/v1/webhooks",
        Some(json!({"url": url, "events": ["memory.created", "memory.deleted"]})),
    )
    .await;
    let ctx = RequestCtx::operator("test");
    // A batch whose second op fails (deleting a memory that does not exist):
    // the first op's insert and its delivery roll back together.
    let (mut ops, _) = w
        .memory
        .prepare_add(
            &ctx,
            vec![AddInput::new(
                Content::Text("Rolled back.".into()),
                scope("acme", "u1"),
            )],
        )
        .await
        .unwrap();
    assert!(!ops.is_empty());
    let missing = uuid::Uuid::now_v7();
    let history = engram_core::memory::HistoryEvent {
        id: uuid::Uuid::now_v7(),
        memory_id: missing,
        event: engram_core::memory::Event::Delete,
        old_text: None,
        new_text: None,
        version: 1,
        actor: None,
        reason: None,
        request_id: None,
        scope: scope("acme", "u1"),
        created_at: w.memory.now(),
    };
    ops.push(WriteOp::Delete {
        id: missing,
        at: w.memory.now(),
        history,
    });
    assert!(w.memory.store().apply(ops).await.is_err());
    assert_eq!(w.memory.store().webhook_pending().await.unwrap(), 0);
    w.drain(&w.runner("w")).await;
    assert!(recv.got().is_empty(), "{:?}", recv.got());
}

#[tokio::test]
async fn two_nodes_deliver_each_event_once() {
    let w = world(config(true, 20)).await;
    let (recv, url) = Receiver::start().await;
    let admin = w.key(org("acme"), Role::Admin).await;
    w.call(
        &admin,
        "POST",
        "/v1/webhooks",
        Some(json!({"url": url, "events": ["memory.created", "memory.updated"]})),
    )
    .await;
    // A second node: its own service and state over the same store.
    let other = common::service(w.store.store.clone()).await;
    let other_state = AppState::new(
        other.clone(),
        KeyService::new(w.store.keys(), Arc::new(SystemClock)),
        config(true, 20),
    );
    // Each user's facts differ only in a number: the first is a memory.created,
    // the rest correct it (memory.updated), so each memory's events must also
    // arrive in order while four workers on two nodes race for them.
    let n = 40;
    for i in 0..n {
        w.add(
            &format!("The launch budget is {} dollars.", 1000 + i),
            scope("acme", &format!("u{}", i % 5)),
        )
        .await;
    }
    let runners: Vec<JobRunner> = (0..4)
        .map(|i| {
            let (memory, state) = if i % 2 == 0 {
                (w.memory.clone(), &w.state)
            } else {
                (other.clone(), &other_state)
            };
            JobRunner::new(memory, jobs_fast(), format!("node{}-{i}", i % 2))
                .with_webhooks(Some(state.webhooks.clone()))
        })
        .collect();
    let store = w.memory.store().clone();
    let tasks: Vec<_> = runners
        .into_iter()
        .map(|r| {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..5000 {
                    if !r.run_once().await.unwrap() {
                        if store.webhook_pending().await.unwrap() == 0 {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let got = recv.got();
    let mut ids: Vec<String> = got
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!((got.len(), ids.len()), (n, n), "each event exactly once");
    let mut versions: HashMap<String, Vec<u64>> = HashMap::new();
    for b in recv.bodies() {
        versions
            .entry(b["data"]["id"].as_str().unwrap().to_owned())
            .or_default()
            .push(b["data"]["version"].as_u64().unwrap());
    }
    assert_eq!(versions.len(), 5, "one memory per user");
    for (id, v) in versions {
        assert_eq!(
            v,
            (1..=8).collect::<Vec<u64>>(),
            "memory {id}'s events in order"
        );
    }
}

#[tokio::test]
async fn private_targets_are_refused_without_the_flag_even_behind_a_name() {
    let w = world(config(false, 20)).await;
    let hosts = HashMap::from([
        (
            "evil.example".to_owned(),
            vec!["127.0.0.1".parse::<IpAddr>().unwrap()],
        ),
        (
            "meta.example".to_owned(),
            vec!["169.254.169.254".parse().unwrap()],
        ),
        (
            "public.example".to_owned(),
            vec!["93.184.215.14".parse().unwrap()],
        ),
    ]);
    let state = w
        .state
        .clone()
        .with_webhook_sender(Arc::new(HttpSender::with_hosts(false, hosts).unwrap()));
    let router = app(state.clone());
    let admin = w.key(org("acme"), Role::Admin).await;
    let post = |url: &str| {
        let router = router.clone();
        let body = json!({"url": url, "events": ["memory.created"]}).to_string();
        let admin = admin.clone();
        async move {
            let resp = router
                .oneshot(
                    Request::post("/v1/webhooks")
                        .header("authorization", format!("Bearer {admin}"))
                        .header("content-type", "application/json")
                        .body(Body::from(body))
                        .unwrap(),
                )
                .await
                .unwrap();
            let status = resp.status();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&bytes).into_owned())
        }
    };
    for url in [
        "http://127.0.0.1:9/hook",
        "http://[::1]/hook",
        "http://localhost/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.5/hook",
        "http://evil.example/hook",
        "http://meta.example/hook",
        "ftp://public.example/hook",
        "http://user:pw@public.example/hook",
    ] {
        let (s, body) = post(url).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{url}: {body}");
        assert!(
            body.contains("application/problem+json") || body.contains("\"status\":400"),
            "{body}"
        );
    }
    let (s, body) = post("http://evil.example/hook").await;
    assert!(body.contains("resolves to 127.0.0.1"), "{s} {body}");
    let (s, created) = post("https://public.example/hook").await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!(
        w.store.store.webhook_list().await.unwrap().len(),
        1,
        "refusals stored nothing"
    );

    // DNS changes after creation (rebinding): the delivery is refused at send time.
    let id: Value = serde_json::from_str(&created).unwrap();
    let rebound = HashMap::from([(
        "public.example".to_owned(),
        vec!["127.0.0.1".parse().unwrap()],
    )]);
    let state = w
        .state
        .clone()
        .with_webhook_sender(Arc::new(HttpSender::with_hosts(false, rebound).unwrap()));
    w.add("Goes nowhere.", scope("acme", "u1")).await;
    let runner = JobRunner::new(w.memory.clone(), jobs_fast(), "w")
        .with_webhooks(Some(state.webhooks.clone()));
    w.drain(&runner).await;
    let attempts = w
        .memory
        .store()
        .webhook_attempts(id["id"].as_str().unwrap().parse().unwrap(), 10)
        .await
        .unwrap();
    assert_eq!(attempts.len(), 1, "refused once, not retried: {attempts:?}");
    assert_eq!(attempts[0].outcome, "refused");
    assert!(attempts[0].error.as_deref().unwrap().contains("127.0.0.1"));
}

#[tokio::test]
async fn webhooks_stay_inside_the_keys_binding() {
    let w = world(config(true, 20)).await;
    let (_recv, url) = Receiver::start().await;
    let acme_u1 = w.key(scope("acme", "u1"), Role::Admin).await;
    let acme = w.key(org("acme"), Role::Admin).await;
    let globex = w.key(org("globex"), Role::Admin).await;
    let writer = w.key(org("acme"), Role::ReadWrite).await;
    let body = |extra: Value| {
        let mut b = json!({"url": url, "events": ["memory.created"]});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    let (s, _) = w
        .call(&writer, "POST", "/v1/webhooks", Some(body(json!({}))))
        .await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "read-write keys cannot manage webhooks"
    );
    let (s, _) = w
        .call(
            &acme_u1,
            "POST",
            "/v1/webhooks",
            Some(body(json!({"scope": {"user_id": "u2"}}))),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "a user-bound admin cannot watch another user"
    );
    let (s, mine) = w
        .call(&acme_u1, "POST", "/v1/webhooks", Some(body(json!({}))))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(mine["scope"]["user_id"], "u1");
    let (s, theirs) = w
        .call(&globex, "POST", "/v1/webhooks", Some(body(json!({}))))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let theirs = theirs["id"].as_str().unwrap();

    // Each sees its own; the org admin sees the user's too; nobody sees globex's.
    let ids = |v: Value| -> Vec<String> {
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ids(w.call(&acme_u1, "GET", "/v1/webhooks", None).await.1).len(),
        1
    );
    assert_eq!(
        ids(w.call(&acme, "GET", "/v1/webhooks", None).await.1).len(),
        1
    );
    for (m, p, b) in [
        ("GET", format!("/v1/webhooks/{theirs}"), None),
        (
            "PATCH",
            format!("/v1/webhooks/{theirs}"),
            Some(json!({"enabled": false})),
        ),
        ("DELETE", format!("/v1/webhooks/{theirs}"), None),
        ("POST", format!("/v1/webhooks/{theirs}/rotate-secret"), None),
        ("GET", format!("/v1/webhooks/{theirs}/deliveries"), None),
    ] {
        let (s, _) = w.call(&acme, m, &p, b).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{m} {p}");
    }
    let (_, h) = w
        .call(&globex, "GET", &format!("/v1/webhooks/{theirs}"), None)
        .await;
    assert_eq!(h["enabled"], true, "unchanged by acme's attempts");

    // Bad input: unknown event, unknown field, no events, bad id.
    for bad in [
        json!({"url": url, "events": ["memory.exploded"]}),
        json!({"url": url, "events": []}),
        json!({"url": url, "events": ["memory.created"], "secret": "mine"}),
        json!({"url": "not a url", "events": ["memory.created"]}),
    ] {
        let (s, p) = w
            .call(&acme, "POST", "/v1/webhooks", Some(bad.clone()))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad} → {p}");
    }
    let (s, _) = w.call(&acme, "GET", "/v1/webhooks/nope", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn erasure_and_dead_jobs_are_announced() {
    let w = world(config(true, 20)).await;
    let (recv, url) = Receiver::start().await;
    let admin = w.key(org("acme"), Role::Admin).await;
    w.call(
        &admin,
        "POST",
        "/v1/webhooks",
        Some(json!({"url": url, "events": ["scope.erased", "job.dead"]})),
    )
    .await;
    // A webhook bound to the erased user goes with the erasure.
    let u1 = w.key(scope("acme", "u1"), Role::Admin).await;
    let (_, own) = w
        .call(
            &u1,
            "POST",
            "/v1/webhooks",
            Some(json!({"url": url, "events": ["scope.erased"]})),
        )
        .await;
    w.add("To be erased.", scope("acme", "u1")).await;
    // An operator's erasure of a user in another org (no org named) is not
    // told to acme's webhook: no tenant learns another's ids.
    w.add("Globex's user.", scope("globex", "g7")).await;
    w.memory
        .erase(&RequestCtx::operator("test"), ScopeField::User, "g7", false)
        .await
        .unwrap();
    // acme's admin erases u1: the erased scope names acme.
    let (s, receipt) = w.call(&admin, "DELETE", "/v1/users/u1", None).await;
    assert_eq!(s, StatusCode::OK, "{receipt}");
    let (s, _) = w
        .call(
            &admin,
            "GET",
            &format!("/v1/webhooks/{}", own["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "the erased user's webhook is gone"
    );

    // An add job that cannot succeed dies at once.
    let bad = engram_core::ports::Job {
        id: uuid::Uuid::now_v7(),
        kind: "add".into(),
        state: engram_core::ports::JobState::Queued,
        payload: json!({"not": "an add"}),
        principal: Principal::operator(),
        scope: scope("acme", "u2"),
        request_id: None,
        attempts: 0,
        max_attempts: 3,
        last_error: None,
        result: None,
        created_at: w.memory.now(),
        updated_at: w.memory.now(),
        run_after: w.memory.now(),
        lease_owner: None,
        lease_until: None,
        ordering: None,
    };
    w.memory.store().job_insert(&bad).await.unwrap();
    let runner = w.runner("w");
    w.drain(&runner).await;
    let bodies = recv.bodies();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    let erased = bodies.iter().find(|b| b["type"] == "scope.erased").unwrap();
    assert_eq!(erased["data"]["user_id"], "u1");
    assert_eq!(erased["data"]["org_id"], "acme");
    assert_eq!(erased["data"]["receipt_id"], receipt["receipt_id"]);
    let dead = bodies.iter().find(|b| b["type"] == "job.dead").unwrap();
    assert_eq!(dead["data"]["job_id"], bad.id.to_string());
    assert!(
        dead["data"]["error"]
            .as_str()
            .unwrap()
            .contains("not an add")
    );
}

#[tokio::test]
async fn the_expiry_sweep_announces_what_it_removes() {
    let w = world(config(true, 20)).await;
    let (recv, url) = Receiver::start().await;
    let admin = w.key(org("acme"), Role::Admin).await;
    w.call(
        &admin,
        "POST",
        "/v1/webhooks",
        Some(json!({"url": url, "events": ["memory.expired"]})),
    )
    .await;
    let mut input = AddInput::new(
        Content::Text("A code valid for a moment.".into()),
        scope("acme", "u1"),
    );
    input.expires_at = Some(w.memory.now() + jiff::SignedDuration::from_millis(50));
    let id = w
        .memory
        .add(&RequestCtx::operator("test"), input)
        .await
        .unwrap()[0]
        .id;
    w.add("A lasting fact.", scope("acme", "u1")).await;
    tokio::time::sleep(Duration::from_millis(80)).await;
    let report = w.memory.sweep().await.unwrap();
    assert_eq!(report.memories, 1, "{report:?}");
    w.drain(&w.runner("w")).await;
    let bodies = recv.bodies();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert_eq!(bodies[0]["type"], "memory.expired");
    assert_eq!(bodies[0]["data"]["id"], id.to_string());
    assert_eq!(bodies[0]["data"]["text"], "A code valid for a moment.");
    assert_eq!(bodies[0]["data"]["reason"], "expired");

    // Metrics: deliveries by outcome, latency, the queue's depth.
    let resp = w
        .router
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    for name in [
        "engram_webhook_deliveries_total",
        "engram_webhook_delivery_seconds",
        "engram_webhook_queue",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
}

#[tokio::test]
async fn workers_told_not_to_deliver_leave_deliveries_to_those_that_do() {
    // `engram mcp` on stdio: workers that run adds but never send webhooks.
    let mut cfg = config(true, 20);
    cfg.workers = 1;
    cfg.deliver_webhooks = false;
    let w = world(cfg).await;
    let (recv, url) = Receiver::start().await;
    let admin = w.key(org("acme"), Role::Admin).await;
    w.call(
        &admin,
        "POST",
        "/v1/webhooks",
        Some(json!({"url": url, "events": ["memory.created"]})),
    )
    .await;
    let workers = engram_server::spawn_workers(&w.state);
    w.add("Left for a server.", scope("acme", "u1")).await;
    w.state.job_ready.notify_one();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(recv.got().is_empty());
    assert_eq!(w.memory.store().webhook_pending().await.unwrap(), 1);
    // A server's worker sends it.
    w.drain(&w.runner("server")).await;
    assert_eq!(recv.got().len(), 1);
    w.state.shutdown.cancel();
    for t in workers {
        let _ = t.await;
    }
}
