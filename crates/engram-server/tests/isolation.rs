//! Tenant isolation, as a property: many keys bound to different orgs, apps,
//! users and agents issue thousands of random operations over real HTTP —
//! the native REST API and MCP (JSON-RPC over streamable HTTP) — and no
//! operation may return, change, delete or erase a memory outside its key's
//! binding. Erasure, audit reads and MCP sessions (another key's session id)
//! are among the operations, with app- and user-bound admins among the keys.
//!
//! Ground truth comes from the service itself as the operator, in process.
//! `ENGRAM_ISOLATION_OPS` sets the number of operations (default 2000);
//! `ENGRAM_ISOLATION_SEED` replays a run.

use std::collections::BTreeMap;
use std::sync::Arc;

use engram_core::access::{Principal, Role};
use engram_core::clock::SystemClock;
use engram_core::ctx::RequestCtx;
use engram_core::filter::Filter;
use engram_core::memory::{Scope, ScopeField};
use engram_core::service::MemoryService;
use engram_core::service::{KeyService, NewKey};
use engram_server::auth::RateLimitConfig;
use engram_server::{AppState, ServerConfig};
use serde_json::{Value, json};

mod common;

const ORGS: [&str; 3] = ["acme", "globex", "initech"];
const APPS: [&str; 2] = ["a1", "a2"];
const USERS: [&str; 3] = ["alice", "bob", "carol"];
const AGENTS: [&str; 2] = ["planner", "coder"];
const TEXTS: [&str; 8] = [
    "likes green tea in the morning",
    "is allergic to peanuts",
    "moved to Lisbon last spring",
    "plays the cello on weekends",
    "works on the billing service",
    "prefers short answers",
    "has a dog called Miso",
    "is learning Japanese",
];
const QUERIES: [&str; 4] = [
    "what does she drink?",
    "allergies",
    "where do they live",
    "hobbies",
];

/// The `id`s of a JSON list of memories.
trait Ids {
    fn memory_ids(&self) -> Vec<String>;
}

impl Ids for Value {
    fn memory_ids(&self) -> Vec<String> {
        self.as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x["id"].as_str().map(str::to_owned))
            .collect()
    }
}

/// xorshift64*: deterministic, seedable, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

struct Key {
    token: String,
    principal: Principal,
}

/// What a memory looked like, for "nothing outside the binding changed".
type Snapshot = BTreeMap<String, (u32, String, Scope)>;

struct World {
    http: reqwest::Client,
    base: String,
    memory: MemoryService,
    operator: RequestCtx,
    /// MCP session id per key.
    sessions: Vec<Option<String>>,
    ids: Vec<String>,
    /// The scope each memory was written with (erased ones keep no history).
    scopes: std::collections::HashMap<String, Scope>,
    rest_ops: usize,
    mcp_ops: usize,
    erasures: usize,
    hijacks: usize,
}

impl World {
    async fn rest(&self, key: &Key, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .bearer_auth(&key.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(Value::Null);
        // Every answer is a success or the caller's error, never the server's.
        assert!(
            status == 200 || (400..500).contains(&status),
            "{method} {path}: {status} {body}"
        );
        (status, body)
    }

    /// One JSON-RPC message to `/mcp`; returns the response's `result` (or `error`).
    async fn mcp_rpc(
        &self,
        key: &Key,
        session: Option<&str>,
        msg: Value,
    ) -> (Option<String>, Value) {
        let mut req = self
            .http
            .post(format!("{}/mcp", self.base))
            .bearer_auth(&key.token)
            .header("accept", "application/json, text/event-stream")
            .json(&msg);
        if let Some(s) = session {
            req = req.header("mcp-session-id", s);
        }
        let resp = req.send().await.expect("mcp request");
        let session = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        assert!(status < 500, "mcp answered {status}: {text}");
        // The answer is an SSE stream (`data: {...}` lines) or plain JSON.
        let value = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .find(|v| v.get("id").is_some())
            .or_else(|| serde_json::from_str(&text).ok())
            .unwrap_or(Value::Null);
        (session, value)
    }

    async fn mcp_tool(&mut self, k: usize, key: &Key, tool: &str, args: Value) -> Value {
        if self.sessions[k].is_none() {
            let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "isolation-test", "version": "1"}}});
            let (session, v) = self.mcp_rpc(key, None, init).await;
            assert!(v.get("result").is_some(), "initialize failed: {v}");
            let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
            self.mcp_rpc(key, session.as_deref(), note).await;
            self.sessions[k] = Some(session.unwrap_or_default());
        }
        let session = self.sessions[k].clone();
        let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": tool, "arguments": args}});
        let (_, v) = self.mcp_rpc(key, session.as_deref(), call).await;
        v["result"].clone()
    }

    /// Every memory in the store, current versions, as the operator sees them.
    async fn snapshot(&self) -> Snapshot {
        let filter = Filter::parse(&json!({"org_id": {"in": ORGS}})).unwrap();
        let mut out = Snapshot::new();
        let mut after = None;
        loop {
            let page = self
                .memory
                .list(&self.operator, &filter, after, 1000)
                .await
                .unwrap();
            for m in page.memories {
                out.insert(m.id.to_string(), (m.version, m.text, m.scope));
            }
            match page.next {
                Some(c) => after = Some(c),
                None => return out,
            }
        }
    }
}

fn random_scope(rng: &mut Rng, key: &Key) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    // Mostly stay inside the binding (realistic), sometimes reach outside it.
    let b = &key.principal.binding;
    if b.app_id.is_some() || rng.chance(40) {
        let app = match (&b.app_id, rng.chance(80)) {
            (Some(a), true) => a.as_str(),
            _ => rng.pick(&APPS),
        };
        m.insert("app_id".into(), json!(app));
    }
    let org = if rng.chance(80) {
        b.org_id.as_deref()
    } else {
        None
    };
    let org = org.unwrap_or_else(|| rng.pick(&ORGS));
    if rng.chance(50) {
        m.insert("org_id".into(), json!(org));
    }
    let user = match (&b.user_id, rng.chance(80)) {
        (Some(u), true) => u.as_str(),
        _ => rng.pick(&USERS),
    };
    if b.user_id.is_some() || rng.chance(85) {
        m.insert("user_id".into(), json!(user));
    }
    if b.agent_id.is_some() || rng.chance(20) {
        let agent = match (&b.agent_id, rng.chance(80)) {
            (Some(a), true) => a.as_str(),
            _ => rng.pick(&AGENTS),
        };
        m.insert("agent_id".into(), json!(agent));
    }
    m
}

/// The scope ids as a query string.
fn query(scope: &serde_json::Map<String, Value>) -> String {
    scope
        .iter()
        .map(|(f, v)| format!("{f}={}", v.as_str().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join("&")
}

/// Whether the request names an id that differs from the key's bound one.
fn names_outside(key: &Key, scope: &serde_json::Map<String, Value>) -> bool {
    let b = &key.principal.binding;
    [
        ("org_id", &b.org_id),
        ("app_id", &b.app_id),
        ("user_id", &b.user_id),
        ("agent_id", &b.agent_id),
    ]
    .iter()
    .any(
        |(f, bound)| match (bound, scope.get(*f).and_then(Value::as_str)) {
            (Some(bound), Some(named)) => bound != named,
            _ => false,
        },
    )
}

async fn scope_of(w: &World, id: &str) -> Option<Scope> {
    let id = id.parse().ok()?;
    // Deleted memories keep their scope in history.
    w.memory
        .history(&w.operator, id)
        .await
        .ok()
        .and_then(|h| h.first().map(|e| e.scope.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_operation_crosses_a_key_binding() {
    let ops: usize = std::env::var("ENGRAM_ISOLATION_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let seed: u64 = std::env::var("ENGRAM_ISOLATION_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    eprintln!("isolation: seed {seed} (ENGRAM_ISOLATION_SEED={seed} replays it), {ops} operations");
    let mut rng = Rng(seed);

    let dir = tempfile::tempdir().unwrap();
    let (store, memory) = common::open(dir.path()).await;
    let keys = KeyService::new(store.keys(), Arc::new(SystemClock));
    // (org, app, user, agent, role)
    type Binding<'a> = (
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
        Role,
    );
    let bindings: [Binding; 10] = [
        ("acme", None, None, None, Role::Admin),
        ("acme", None, Some("alice"), None, Role::ReadWrite),
        ("acme", None, Some("bob"), None, Role::ReadWrite),
        ("acme", None, Some("alice"), None, Role::ReadOnly),
        ("acme", Some("a1"), None, None, Role::Admin),
        ("acme", None, Some("carol"), None, Role::Admin),
        ("acme", Some("a2"), Some("bob"), None, Role::ReadWrite),
        ("globex", None, Some("alice"), None, Role::ReadWrite),
        ("globex", None, None, None, Role::Admin),
        ("initech", None, None, Some("planner"), Role::ReadWrite),
    ];
    let mut all_keys = Vec::new();
    for (org, app, user, agent, role) in bindings {
        let new = NewKey {
            name: "isolation".into(),
            role: Some(role),
            binding: Scope {
                org_id: Some(org.into()),
                app_id: app.map(Into::into),
                user_id: user.map(Into::into),
                agent_id: agent.map(Into::into),
                ..Default::default()
            },
            rate_limit: None,
        };
        let (k, token) = keys.create(&Principal::operator(), new).await.unwrap();
        all_keys.push(Key {
            token,
            principal: k.principal(),
        });
    }
    let config = ServerConfig {
        rate_limit: RateLimitConfig {
            per_minute: 0,
            burst: 1,
        },
        ..ServerConfig::default()
    };
    let state = AppState::new(memory.clone(), keys, config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(engram_server::serve(listener, state, async {
        let _ = stopped.await;
    }));

    let mut w = World {
        http: reqwest::Client::new(),
        base,
        memory,
        operator: RequestCtx::operator("test"),
        sessions: (0..all_keys.len()).map(|_| None).collect(),
        ids: Vec::new(),
        scopes: std::collections::HashMap::new(),
        rest_ops: 0,
        mcp_ops: 0,
        erasures: 0,
        hijacks: 0,
    };
    let mut refused = 0usize;
    // Keys an erasure removed with the scope they were bound to.
    let mut dead = vec![false; all_keys.len()];
    for n in 0..ops {
        let k = rng.below(all_keys.len());
        if dead[k] {
            // Erased with the scope it was bound to (checked when it happened).
            continue;
        }
        let key = &all_keys[k];
        let mcp = rng.chance(40);
        let scope = random_scope(&mut rng, key);
        let outside = names_outside(key, &scope);
        let writes = key.principal.role >= Role::ReadWrite;
        let op = rng.below(105);
        // Reads (search, list, audit) cannot change anything; the rest is checked.
        let mutating = !(30..70).contains(&op) && !(101..103).contains(&op);
        let before = if mutating {
            w.snapshot().await
        } else {
            Snapshot::new()
        };
        let what = format!(
            "op {n} ({}, key {k}, {:?})",
            if mcp { "mcp" } else { "rest" },
            scope
        );
        // Memories this op returned, by id.
        let mut returned: Vec<String> = Vec::new();
        let ok;
        if op < 30 {
            // add
            let text = format!("{} {} ({n})", rng.pick(&USERS), rng.pick(&TEXTS));
            let mut args = scope.clone();
            args.insert("text".into(), json!(text));
            let ids: Vec<String> = if mcp {
                let r = w.mcp_tool(k, key, "add_memory", Value::Object(args)).await;
                ok = r.is_object() && r["isError"] != json!(true);
                r["structuredContent"]["results"].memory_ids()
            } else {
                let (s, r) = w
                    .rest(key, "POST", "/v1/memories", Some(Value::Object(args)))
                    .await;
                ok = s == 200;
                r["results"].memory_ids()
            };
            for id in &ids {
                let scope = scope_of(&w, id).await.expect("added memory exists");
                assert!(
                    key.principal.covers(&scope),
                    "{what}: wrote {id} outside the binding: {scope:?}"
                );
                w.ids.push(id.clone());
                w.scopes.insert(id.clone(), scope);
            }
            if outside || !writes {
                assert!(
                    !ok,
                    "{what}: a write outside the binding or by a read-only key succeeded"
                );
            }
        } else if op < 55 {
            // search
            let query = rng.pick(&QUERIES);
            let mut args = scope.clone();
            args.insert("query".into(), json!(query));
            if mcp {
                let r = w
                    .mcp_tool(k, key, "search_memory", Value::Object(args))
                    .await;
                ok = r.is_object() && r["isError"] != json!(true);
                returned = r["structuredContent"]["results"].memory_ids();
            } else {
                let (s, r) = w
                    .rest(
                        key,
                        "POST",
                        "/v1/memories/search",
                        Some(Value::Object(args)),
                    )
                    .await;
                ok = s == 200;
                returned = r["results"].memory_ids();
            }
            if outside {
                assert!(
                    !ok,
                    "{what}: a search naming ids outside the binding succeeded"
                );
            }
        } else if op < 70 {
            // list
            if mcp {
                let r = w
                    .mcp_tool(k, key, "list_memories", Value::Object(scope.clone()))
                    .await;
                ok = r.is_object() && r["isError"] != json!(true);
                returned = r["structuredContent"]["results"].memory_ids();
            } else {
                let (s, r) = w
                    .rest(
                        key,
                        "GET",
                        &format!("/v1/memories?limit=1000&{}", query(&scope)),
                        None,
                    )
                    .await;
                ok = s == 200;
                returned = r["results"].memory_ids();
            }
            if outside {
                assert!(
                    !ok,
                    "{what}: a list naming ids outside the binding succeeded"
                );
            }
        } else if op < 98 && !w.ids.is_empty() {
            // get / update / delete / history of any memory ever written, anyone's
            let id = w.ids[rng.below(w.ids.len())].clone();
            let target = w.scopes[&id].clone();
            let inside = key.principal.covers(&target);
            let kind = rng.below(4);
            if mcp {
                let (tool, args) = match kind {
                    0 | 3 => ("get_memory", json!({"id": id})),
                    1 => (
                        "update_memory",
                        json!({"id": id, "text": format!("rewritten by key {k} ({n})")}),
                    ),
                    _ => ("delete_memory", json!({"id": id})),
                };
                let r = w.mcp_tool(k, key, tool, args).await;
                ok = r.is_object() && r["isError"] != json!(true);
                if ok && tool == "get_memory" {
                    returned.push(
                        r["structuredContent"]["id"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    );
                }
            } else {
                let (method, path, body) = match kind {
                    0 => ("GET", format!("/v1/memories/{id}"), None),
                    1 => (
                        "PATCH",
                        format!("/v1/memories/{id}"),
                        Some(json!({"text": format!("rewritten by key {k} ({n})")})),
                    ),
                    2 => ("DELETE", format!("/v1/memories/{id}"), None),
                    _ => ("GET", format!("/v1/memories/{id}/history"), None),
                };
                let (s, r) = w.rest(key, method, &path, body).await;
                ok = s == 200;
                if ok && kind == 0 {
                    returned.push(r["id"].as_str().unwrap_or_default().to_owned());
                }
                if ok && kind == 3 {
                    assert!(inside, "{what}: history of a memory outside the binding");
                }
            }
            if !inside {
                assert!(!ok, "{what}: touched {id} outside the binding ({target:?})");
            }
        } else if op == 100 {
            // erasure of a user, agent or org (a rare, sweeping operation)
            let (field, path, id) = match rng.below(10) {
                0 => (ScopeField::Org, "orgs", rng.pick(&ORGS)),
                1 => (ScopeField::Agent, "agents", rng.pick(&AGENTS)),
                _ => (ScopeField::User, "users", rng.pick(&USERS)),
            };
            let (s, r) = w
                .rest(
                    key,
                    "DELETE",
                    &format!("/v1/{path}/{id}?compact=false"),
                    None,
                )
                .await;
            ok = s == 200;
            w.erasures += usize::from(ok);
            let b = &key.principal.binding;
            let bound_elsewhere = b.get(field).is_some_and(|v| v != id);
            let own = b.get(field) == Some(id) && field != ScopeField::Org;
            let narrow_org = field == ScopeField::Org
                && (b.app_id.is_some() || b.user_id.is_some() || b.agent_id.is_some());
            if bound_elsewhere
                || narrow_org
                || key.principal.role < Role::ReadWrite
                || (!own && key.principal.role < Role::Admin)
            {
                assert!(
                    !ok,
                    "{what}: erasure of {field:?}={id} should be refused: {r}"
                );
            }
            if ok {
                // The receipt names the binding it stayed in.
                for (f, v) in b.iter() {
                    assert_eq!(r["scope"][f.as_str()], json!(v), "{what}: {r}");
                }
                // Keys bound to the erased id inside that binding went with it.
                for (j, other) in all_keys.iter().enumerate() {
                    let ob = &other.principal.binding;
                    let named = ob.get(field) == Some(id);
                    let within = b.iter().all(|(f, v)| ob.get(f) == Some(v));
                    if named && within {
                        dead[j] = true;
                        let (s, _) = w.rest(other, "GET", "/v1/jobs?limit=1", None).await;
                        assert_eq!(s, 401, "{what}: key {j} bound to the erased id still works");
                    }
                }
            }
        } else if (101..103).contains(&op) {
            // the audit log
            let (s, r) = w.rest(key, "GET", "/v1/audit?limit=1000", None).await;
            ok = s == 200;
            let b = &key.principal.binding;
            let whole_org = b.app_id.is_none() && b.user_id.is_none() && b.agent_id.is_none();
            assert_eq!(
                ok,
                key.principal.role >= Role::Admin && whole_org,
                "{what}: audit read answered {s}: {r}"
            );
            for e in r["results"].as_array().into_iter().flatten() {
                assert_eq!(
                    e["org_id"],
                    json!(b.org_id),
                    "{what}: audit event of another org"
                );
            }
        } else if op >= 103 {
            // another key's MCP session, with this key's credentials
            let other = rng.below(all_keys.len());
            let victim = w.sessions[other].clone();
            match victim {
                Some(session) if other != k => {
                    let resp = w
                        .http
                        .post(format!("{}/mcp", w.base))
                        .bearer_auth(&key.token)
                        .header("accept", "application/json, text/event-stream")
                        .header("mcp-session-id", &session)
                        .json(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                            "params": {"name": "list_memories", "arguments": {}}}))
                        .send()
                        .await
                        .unwrap();
                    ok = resp.status().is_success();
                    let same_caller = all_keys[other].principal.key_id == key.principal.key_id;
                    assert!(
                        !ok || same_caller,
                        "{what}: used key {other}'s MCP session ({})",
                        resp.status()
                    );
                    w.hijacks += 1;
                    // Deleting it is refused too.
                    let resp = w
                        .http
                        .delete(format!("{}/mcp", w.base))
                        .bearer_auth(&key.token)
                        .header("mcp-session-id", &session)
                        .send()
                        .await
                        .unwrap();
                    assert!(
                        !resp.status().is_success(),
                        "{what}: deleted key {other}'s MCP session"
                    );
                }
                _ => ok = true,
            }
        } else {
            // delete all (of the scope the request names, within the binding)
            let mut args = scope.clone();
            if mcp {
                args.insert("confirm".into(), json!(true));
                let r = w
                    .mcp_tool(k, key, "delete_all_memories", Value::Object(args))
                    .await;
                ok = r.is_object() && r["isError"] != json!(true);
            } else {
                let (s, _) = w
                    .rest(
                        key,
                        "DELETE",
                        &format!("/v1/memories?{}", query(&scope)),
                        None,
                    )
                    .await;
                ok = s == 200;
            }
            if outside || !writes {
                assert!(
                    !ok,
                    "{what}: a delete-all outside the binding or by a read-only key succeeded"
                );
            }
        }
        if !ok {
            refused += 1;
        }
        if mcp {
            w.mcp_ops += 1;
        } else {
            w.rest_ops += 1;
        }
        // Nothing returned lies outside the binding.
        for id in &returned {
            let scope = scope_of(&w, id).await.unwrap_or_default();
            assert!(
                key.principal.covers(&scope),
                "{what}: returned {id} from outside the binding: {scope:?}"
            );
        }
        // Nothing outside the binding changed.
        let after = w.snapshot().await;
        for (id, (version, text, scope)) in &before {
            if key.principal.covers(scope) {
                continue;
            }
            let now = after.get(id).map(|(v, t, _)| (*v, t.as_str()));
            assert_eq!(
                now,
                Some((*version, text.as_str())),
                "{what}: changed {id} outside the binding"
            );
        }
    }
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    let live = w.snapshot().await.len();
    eprintln!(
        "isolation: {} operations ({} REST, {} MCP over HTTP) by {} keys; {refused} refused; {} memories written, {live} live at the end; {} erasures, {} session hijacks refused; 0 crossed a binding",
        w.rest_ops + w.mcp_ops,
        w.rest_ops,
        w.mcp_ops,
        all_keys.len(),
        w.ids.len(),
        w.erasures,
        w.hijacks
    );
    assert!(
        w.ids.len() > ops / 20,
        "the run wrote too little to mean anything"
    );
}
