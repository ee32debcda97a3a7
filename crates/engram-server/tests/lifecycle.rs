//! Expiry and decay, end to end over a real store and the real model, with a
//! clock the tests move (no sleeps): session memories expire a TTL after
//! their last use, scope policies and per-request TTLs within bounds, the
//! episodic cap, the sweep, and per-kind recency half-lives in explanations.
//! Runs on SQLite, and on Postgres with `ENGRAM_TEST_STORE=postgres`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use engram_core::ErrorCode;
use engram_core::config::{HalfLives, IngestConfig, RetrievalConfig};
use engram_core::ctx::RequestCtx;
use engram_core::filter::Filter;
use engram_core::lifecycle::{LifecycleConfig, PolicyRules};
use engram_core::memory::{MemoryKind, Scope};
use engram_core::ports::AuditQuery;
use engram_core::service::KeyService;
use engram_core::service::{AddInput, Content, MemoryService, SearchInput};
use engram_server::auth::AuthMode;
use engram_server::{AppState, ServerConfig, app};
use engram_testkit::ManualClock;
use http_body_util::BodyExt;
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use tower::ServiceExt;

mod common;

const HOUR: SignedDuration = SignedDuration::from_hours(1);

struct Setup {
    memory: MemoryService,
    clock: Arc<ManualClock>,
    _store: common::Opened,
    _dir: tempfile::TempDir,
}

async fn setup(lifecycle: LifecycleConfig, retrieval: RetrievalConfig) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = common::open(dir.path()).await;
    let clock = ManualClock::new(Timestamp::from_second(1_800_000_000).unwrap());
    let memory = MemoryService::new(
        store.store.clone(),
        common::embedder(),
        retrieval,
        IngestConfig::default(),
        100,
        clock.clone(),
    )
    .await
    .unwrap()
    .with_lifecycle(lifecycle);
    Setup {
        memory,
        clock,
        _store: store,
        _dir: dir,
    }
}

fn lifecycle(rules: PolicyRules, policies: &[&str]) -> LifecycleConfig {
    LifecycleConfig {
        defaults: rules,
        policies: policies.iter().map(|p| p.parse().unwrap()).collect(),
        ..LifecycleConfig::default()
    }
}

fn ctx() -> RequestCtx {
    RequestCtx::operator("test")
}

fn scope(org: &str, user: &str, run: Option<&str>) -> Scope {
    Scope {
        org_id: Some(org.into()),
        user_id: Some(user.into()),
        run_id: run.map(Into::into),
        ..Default::default()
    }
}

fn input(text: &str, scope: Scope) -> AddInput {
    AddInput::new(Content::Text(text.into()), scope)
}

fn mins(n: u64) -> Duration {
    Duration::from_secs(60 * n)
}

impl Setup {
    async fn add(&self, input: AddInput) -> uuid::Uuid {
        let r = self.memory.add(&ctx(), input).await.unwrap();
        assert_eq!(r.len(), 1, "{r:?}");
        r[0].id
    }

    async fn search(&self, query: &str, scope: &Scope) -> Vec<(String, f32)> {
        self.memory
            .search(
                &ctx(),
                SearchInput {
                    query: query.into(),
                    filter: Filter::from_scope(scope),
                    top_k: Some(10),
                    threshold: None,
                    token_budget: Some(0),
                    explain: true,
                },
            )
            .await
            .unwrap()
            .hits
            .into_iter()
            .map(|h| {
                let decay = h.explanation.map_or(-1.0, |e| e.decay);
                (h.memory.text, decay)
            })
            .collect()
    }

    async fn texts(&self, scope: &Scope) -> Vec<String> {
        let mut t: Vec<String> = self
            .memory
            .list(&ctx(), &Filter::from_scope(scope), None, 100)
            .await
            .unwrap()
            .memories
            .into_iter()
            .map(|m| m.text)
            .collect();
        t.sort();
        t
    }
}

/// A session memory lives one TTL past its last use: a search that returns
/// it, or a get, moves its expiry; left alone it expires, is invisible at
/// once, and the sweep removes it with its history. Memories outside
/// sessions do not expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_memories_expire_a_ttl_after_their_last_use() {
    let s = setup(
        lifecycle(
            PolicyRules {
                session_ttl: Some(HOUR),
                ..Default::default()
            },
            &[],
        ),
        RetrievalConfig::default(),
    )
    .await;
    let run = scope("acme", "ann", Some("chat-1"));
    let user = scope("acme", "ann", None);
    let trip = s
        .add(input("Ann is flying to Tokyo on Monday", run.clone()))
        .await;
    s.add(input("Ann is allergic to peanuts", user.clone()))
        .await;
    let start = s.clock.now_for_test();
    let m = s.memory.get(&ctx(), trip).await.unwrap();
    assert_eq!(m.expires_at, Some(start + HOUR));
    assert_eq!(m.idle_ttl, Some(HOUR));

    // Used at 50 and 100 minutes: alive at 100, past the first hour.
    s.clock.advance(mins(50));
    assert_eq!(s.search("when is the flight to Tokyo", &run).await.len(), 1);
    s.clock.advance(mins(50));
    let m = s.memory.get(&ctx(), trip).await.unwrap();
    assert_eq!(
        m.expires_at,
        Some(start + SignedDuration::from_mins(100) + HOUR),
        "the get moved it again"
    );
    // Left alone for an hour and a minute: gone from every read at once.
    s.clock.advance(mins(61));
    assert!(
        s.search("when is the flight to Tokyo", &run)
            .await
            .is_empty()
    );
    let e = s.memory.get(&ctx(), trip).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    assert_eq!(s.texts(&user).await, vec!["Ann is allergic to peanuts"]);
    assert_eq!(s.memory.history(&ctx(), trip).await.unwrap().len(), 1);

    let report = s.memory.sweep().await.unwrap();
    assert_eq!(
        (report.memories, report.versions, report.history_events),
        (1, 1, 1)
    );
    let e = s.memory.history(&ctx(), trip).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound, "no trace left");
    assert_eq!(s.memory.sweep().await.unwrap().memories, 0);
    // Far in the future, the memory outside a session is still there.
    s.clock.advance(Duration::from_secs(86_400 * 3650));
    assert_eq!(s.memory.sweep().await.unwrap().memories, 0);
    assert_eq!(s.texts(&user).await.len(), 1);
}

/// Org and app policies override the defaults; a request's own TTL must lie
/// within the scope's bounds; a fixed `expires_at` is never moved by use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_and_request_ttls() {
    let s = setup(
        lifecycle(
            PolicyRules {
                session_ttl: Some(HOUR),
                ..Default::default()
            },
            &[
                "org_id=acme,session_ttl=0",
                "org_id=globex,max_ttl=1d,memory_ttl=12h",
            ],
        ),
        RetrievalConfig::default(),
    )
    .await;
    let start = s.clock.now_for_test();
    // acme: sessions never expire.
    let id = s
        .add(input(
            "Bo prefers window seats",
            scope("acme", "bo", Some("r1")),
        ))
        .await;
    assert_eq!(s.memory.get(&ctx(), id).await.unwrap().expires_at, None);
    // globex: every memory has a 12 h sliding TTL by default …
    let id = s
        .add(input("Cy works night shifts", scope("globex", "cy", None)))
        .await;
    let m = s.memory.get(&ctx(), id).await.unwrap();
    assert_eq!(m.expires_at, Some(start + HOUR * 12));
    // … a request may ask for 2 h, not for 2 days, not for 5 s, not with `expires_at`.
    let mut ask = input("Cy is on call this weekend", scope("globex", "cy", None));
    ask.ttl = Some(HOUR * 2);
    let id = s.add(ask.clone()).await;
    assert_eq!(
        s.memory.get(&ctx(), id).await.unwrap().expires_at,
        Some(start + HOUR * 2)
    );
    for (ttl, says) in [
        (HOUR * 48, "at most 1d"),
        (SignedDuration::from_secs(5), "shortest"),
    ] {
        let mut bad = input("Cy has a cat named Miso", scope("globex", "cy", None));
        bad.ttl = Some(ttl);
        let e = s.memory.add(&ctx(), bad).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert!(e.message.contains(says), "{}", e.message);
    }
    let mut both = input("Cy has a cat named Miso", scope("globex", "cy", None));
    both.ttl = Some(HOUR);
    both.expires_at = Some(start + HOUR);
    let e = s.memory.add(&ctx(), both).await.unwrap_err();
    assert!(e.message.contains("not both"), "{}", e.message);
    assert_eq!(
        s.texts(&scope("globex", "cy", None)).await.len(),
        2,
        "refused adds changed nothing"
    );
    // A fixed expiry in a session stays where it was put, however often used.
    let mut fixed = input(
        "Dee's hotel checkout is at noon",
        scope("globex", "dee", Some("r2")),
    );
    fixed.expires_at = Some(start + HOUR * 3);
    let id = s.add(fixed).await;
    s.clock.advance(mins(170));
    let m = s.memory.get(&ctx(), id).await.unwrap();
    assert_eq!((m.expires_at, m.idle_ttl), (Some(start + HOUR * 3), None));
    s.clock.advance(mins(11));
    assert!(s.memory.get(&ctx(), id).await.is_err());
}

/// With an episodic cap of 3 per scope, a scope keeps its 3 most recent
/// episodic memories; older ones expire in the same write (audited), other
/// kinds and other scopes are untouched, and the sweep removes the expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn episodic_memories_are_capped_per_scope() {
    let s = setup(
        lifecycle(PolicyRules::default(), &["org_id=acme,episodic_cap=3"]),
        RetrievalConfig::default(),
    )
    .await;
    let ann = scope("acme", "ann", None);
    let events = [
        "Ann went hiking in Sintra",
        "Ann had dinner at a Thai restaurant",
        "Ann visited the dentist",
        "Ann watched a football match",
        "Ann repaired her bicycle",
    ];
    for text in events {
        let mut i = input(text, ann.clone());
        i.kind = MemoryKind::Episodic;
        s.add(i).await;
        s.clock.advance(mins(1));
    }
    s.add(input("Ann is a nurse", ann.clone())).await;
    let mut other = input("Bo went hiking in Sintra", scope("acme", "bo", None));
    other.kind = MemoryKind::Episodic;
    s.add(other).await;

    let mut want: Vec<String> = events[2..]
        .iter()
        .map(|t| t.to_string())
        .chain(["Ann is a nurse".to_string()])
        .collect();
    want.sort();
    assert_eq!(s.texts(&ann).await, want);
    assert_eq!(s.texts(&scope("acme", "bo", None)).await.len(), 1);
    let expired = s
        .memory
        .store()
        .audit_list(&AuditQuery {
            action: Some("memory.expire".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(expired.len(), 2);
    assert!(
        expired
            .iter()
            .all(|(_, e)| e.detail["reason"] == "episodic_cap")
    );
    assert_eq!(s.memory.sweep().await.unwrap().memories, 2);
}

/// Recency half-lives are per kind, and explanations show the factor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recency_half_life_is_per_kind() {
    let retrieval = RetrievalConfig {
        half_life_days: HalfLives {
            semantic: 0.0,
            episodic: 1.0,
            procedural: 0.0,
        },
        decay_floor: 0.2,
        ..RetrievalConfig::default()
    };
    let s = setup(LifecycleConfig::default(), retrieval).await;
    let ann = scope("acme", "ann", None);
    s.add(input("Ann plays the cello", ann.clone())).await;
    let mut e = input("Ann played the cello at a wedding", ann.clone());
    e.kind = MemoryKind::Episodic;
    s.add(e).await;
    s.clock.advance(Duration::from_secs(2 * 86_400));
    let hits = s.search("cello", &ann).await;
    let decay = |t: &str| hits.iter().find(|(x, _)| x == t).map(|(_, d)| *d);
    assert_eq!(
        decay("Ann plays the cello"),
        Some(1.0),
        "semantic: no decay"
    );
    // Two half-lives: 0.2 + 0.8 × 0.25.
    let episodic = decay("Ann played the cello at a wedding").unwrap();
    assert!((episodic - 0.4).abs() < 1e-3, "{episodic}");
}

/// Over HTTP: `ttl_seconds` is honoured and echoed; out of bounds is a 400
/// problem that names the bound and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ttl_seconds() {
    let s = setup(
        lifecycle(
            PolicyRules {
                max_ttl: Some(HOUR * 24),
                ..Default::default()
            },
            &[],
        ),
        RetrievalConfig::default(),
    )
    .await;
    let keys = KeyService::new(s._store.keys(), s.clock.clone());
    let router = app(AppState::new(
        s.memory.clone(),
        keys,
        ServerConfig {
            auth: AuthMode::InsecureNoAuth,
            ..ServerConfig::default()
        },
    ));
    let post = |body: Value| {
        Request::post("/v1/memories")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let res = router
        .clone()
        .oneshot(post(
            json!({"text": "Eve's locker code is 4411", "user_id": "eve", "ttl_seconds": 7200}),
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let id = body["results"][0]["id"].as_str().unwrap().to_owned();
    let res = router
        .clone()
        .oneshot(
            Request::get(format!("/v1/memories/{id}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let m: Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(m["ttl_seconds"], 7200, "{m}");
    assert!(m["expires_at"].is_string(), "{m}");

    let res = router
        .clone()
        .oneshot(post(
            json!({"text": "Eve's bike is red", "user_id": "eve", "ttl_seconds": 172800}),
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        res.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let p: Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert!(p["detail"].as_str().unwrap().contains("at most 1d"), "{p}");
    let n = s
        .memory
        .list(&ctx(), &Filter::from_scope(&scope_user("eve")), None, 10)
        .await
        .unwrap()
        .memories
        .len();
    assert_eq!(n, 1);
}

fn scope_user(u: &str) -> Scope {
    Scope {
        user_id: Some(u.into()),
        ..Default::default()
    }
}

trait Now {
    fn now_for_test(&self) -> Timestamp;
}

impl Now for ManualClock {
    fn now_for_test(&self) -> Timestamp {
        engram_core::clock::Clock::now(self)
    }
}
