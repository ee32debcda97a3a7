//! Every transport takes the same door and gets the same rules: with an LLM
//! configured, an add over REST and over MCP (streamable HTTP) is queued as
//! a job the same way, and Mem0's synchronous add runs the same pipeline;
//! the same bad input gets the same error code over REST, Mem0 and MCP.
//! A real server on a loopback port, the real model, a real store; the LLM
//! is a scripted OpenAI-compatible server (the only double).

use std::sync::Arc;

use engram_core::clock::SystemClock;
use engram_core::pipeline::Pipeline;
use engram_core::service::{JobConfig, KeyService};
use engram_llm::{ClientConfig, OpenAiChat};
use engram_server::auth::AuthMode;
use engram_server::{AppState, ServerConfig};
use engram_testkit::{Reply, ScriptedLlm};
use serde_json::{Value, json};

mod common;

struct Server {
    base: String,
    http: reqwest::Client,
    llm: Option<ScriptedLlm>,
    session: Option<String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

/// A server on a free port, as the local operator; with an LLM when asked.
/// It runs no workers, so a queued job stays queued for the test to see.
async fn server(with_llm: bool) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (store, memory) = common::open(dir.path()).await;
    let keys = KeyService::new(store.keys(), Arc::new(SystemClock));
    let config = ServerConfig {
        auth: AuthMode::InsecureNoAuth,
        workers: 0,
        jobs: JobConfig::default(),
        ..ServerConfig::default()
    };
    let mut state = AppState::new(memory.clone(), keys, config);
    let llm = if with_llm {
        let llm = ScriptedLlm::start().await;
        let mut cfg = ClientConfig::new(llm.url(), "scripted");
        cfg.max_retries = 0;
        let chat = OpenAiChat::new(
            cfg,
            Arc::new(engram_llm::TokioSleeper),
            Arc::new(SystemClock),
        )
        .unwrap();
        state = state.with_pipeline(Pipeline::new(memory, Arc::new(chat)));
        Some(llm)
    } else {
        None
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(engram_server::serve(listener, state, async {
        let _ = stopped.await;
    }));
    Server {
        base,
        http: reqwest::Client::new(),
        llm,
        session: None,
        stop: Some(stop),
        _dir: dir,
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Server {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// One JSON-RPC message to `/mcp` in this server's session.
    async fn rpc(&mut self, msg: Value) -> Value {
        let mut req = self
            .http
            .post(format!("{}/mcp", self.base))
            .header("accept", "application/json, text/event-stream")
            .json(&msg);
        if let Some(s) = &self.session {
            req = req.header("mcp-session-id", s);
        }
        let resp = req.send().await.unwrap();
        if let Some(s) = resp.headers().get("mcp-session-id") {
            self.session = Some(s.to_str().unwrap().to_owned());
        }
        let text = resp.text().await.unwrap();
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .find(|v| v.get("id").is_some())
            .or_else(|| serde_json::from_str(&text).ok())
            .unwrap_or(Value::Null)
    }

    /// A tool call over MCP (initialising the session first); its result.
    async fn tool(&mut self, name: &str, args: Value) -> Value {
        if self.session.is_none() {
            let init = self
                .rpc(
                    json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                    "protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": {"name": "transports-test", "version": "1"}}}),
                )
                .await;
            assert!(init.get("result").is_some(), "{init}");
            self.rpc(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
                .await;
        }
        let r = self
            .rpc(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": name, "arguments": args}}))
            .await;
        r["result"].clone()
    }

    async fn job(&self, id: &str) -> Value {
        let (s, j) = self
            .call(reqwest::Method::GET, &format!("/v1/jobs/{id}"), None)
            .await;
        assert_eq!(s, 200, "{j}");
        j
    }
}

fn facts(texts: &[&str]) -> Reply {
    let facts: Vec<Value> = texts
        .iter()
        .map(|t| json!({"text": t, "kind": "semantic", "entities": [], "valid_at": null, "speaker": "user"}))
        .collect();
    Reply::chat_json(json!({ "facts": facts }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_llm_every_transport_adds_through_the_same_decision() {
    let mut s = server(true).await;

    // REST: queued as a job (the default with an LLM).
    let (status, rest) = s
        .post(
            "/v1/memories",
            json!({"text": "I moved to Porto last spring.", "user_id": "ana"}),
        )
        .await;
    assert_eq!(status, 202, "{rest}");
    let job = s.job(rest["job_id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "queued");

    // MCP over HTTP: the same decision, reported as the queued job.
    let out = s
        .tool(
            "add_memory",
            json!({"text": "I moved to Porto last spring.", "user_id": "ana"}),
        )
        .await;
    assert_ne!(out["isError"], json!(true), "{out}");
    let added = &out["structuredContent"];
    assert_eq!(added["results"], json!([]), "{out}");
    assert_eq!(added["job"]["status"], "queued", "{out}");
    let job = s.job(added["job"]["id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "queued");
    assert_eq!(job["kind"], "add");
    // Nothing was stored verbatim by either: the jobs will extract facts.
    let (_, listed) = s
        .call(reqwest::Method::GET, "/v1/memories?user_id=ana", None)
        .await;
    assert_eq!(listed["results"], json!([]), "{listed}");

    // Mem0's route answers synchronously, through the same pipeline (the
    // LLM extracts; with no neighbour to consolidate against, it is an ADD).
    let llm = s.llm.as_ref().unwrap();
    llm.push([facts(&["Ana lives in Porto"])]);
    let (status, mem0) = s
        .post(
            "/v1/memories/",
            json!({"messages": [{"role": "user", "content": "I live in Porto."}], "user_id": "ana"}),
        )
        .await;
    assert_eq!(status, 200, "{mem0}");
    assert_eq!(mem0["results"][0]["memory"], "Ana lives in Porto", "{mem0}");
    assert_eq!(llm.received_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_llm_mcp_adds_verbatim_like_rest() {
    let mut s = server(false).await;
    let out = s
        .tool(
            "add_memory",
            json!({"text": "Bo plays the oboe.", "user_id": "bo"}),
        )
        .await;
    let added = &out["structuredContent"];
    assert_eq!(added["results"][0]["event"], "ADD", "{out}");
    assert!(added.get("job").is_none(), "{out}");
    let (status, rest) = s
        .post(
            "/v1/memories",
            json!({"text": "Bo plays the oboe.", "user_id": "bo"}),
        )
        .await;
    assert_eq!(status, 200, "{rest}");
    assert_eq!(rest["results"][0]["event"], "NOOP");
    assert_eq!(rest["results"][0]["id"], added["results"][0]["id"]);
}

/// The error code a tool result names (`code: message`).
fn tool_code(out: &Value) -> String {
    assert_eq!(out["isError"], json!(true), "{out}");
    let text = out["content"][0]["text"].as_str().unwrap();
    text.split(':').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_bad_input_gets_the_same_code_everywhere() {
    let mut s = server(false).await;
    // (REST path and body, Mem0 path and body, MCP tool and arguments, expected code)
    let cases = [
        (
            (
                "/v1/memories",
                json!({"text": "x", "messages": [{"role": "user", "content": "y"}], "user_id": "u"}),
            ),
            (
                "/v1/memories/",
                json!({"text": "x", "messages": [{"role": "user", "content": "y"}], "user_id": "u"}),
            ),
            (
                "add_memory",
                json!({"text": "x", "messages": [{"role": "user", "content": "y"}], "user_id": "u"}),
            ),
            "invalid_request",
        ),
        (
            ("/v1/memories", json!({"messages": [], "user_id": "u"})),
            ("/v1/memories/", json!({"messages": [], "user_id": "u"})),
            ("add_memory", json!({"messages": [], "user_id": "u"})),
            "invalid_request",
        ),
        (
            (
                "/v1/memories/search",
                json!({"query": "x", "top_k": 5000, "filters": {"user_id": "u"}}),
            ),
            (
                "/v3/memories/search/",
                json!({"query": "x", "top_k": 5000, "filters": {"user_id": "u"}}),
            ),
            (
                "search_memory",
                json!({"query": "x", "top_k": 5000, "user_id": "u"}),
            ),
            "limit_exceeded",
        ),
        (
            (
                "/v1/memories/search",
                json!({"query": "x", "user_id": "u\nv"}),
            ),
            (
                "/v3/memories/search/",
                json!({"query": "x", "user_id": "u\nv"}),
            ),
            ("search_memory", json!({"query": "x", "user_id": "u\nv"})),
            "invalid_request",
        ),
    ];
    for ((rest_path, rest_body), (mem0_path, mem0_body), (tool, args), code) in cases {
        let (status, rest) = s.post(rest_path, rest_body).await;
        assert_eq!(rest["code"], code, "REST {rest_path}: {rest}");
        let (mem0_status, mem0) = s.post(mem0_path, mem0_body).await;
        assert_eq!(mem0["code"], code, "Mem0 {mem0_path}: {mem0}");
        assert_eq!(mem0_status, status, "{mem0_path}: {mem0} vs {rest}");
        let out = s.tool(tool, args).await;
        assert_eq!(tool_code(&out), code, "MCP {tool}: {out}");
    }
    // Nothing was written by any of them.
    let (_, listed) = s
        .call(reqwest::Method::GET, "/v1/memories?user_id=u", None)
        .await;
    assert_eq!(listed["results"], json!([]));
    // A Mem0 client's own oversized page is refused, not silently clamped.
    let (status, body) = s
        .call(reqwest::Method::GET, "/memories?user_id=u&top_k=5000", None)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("limit_exceeded")),
        "{body}"
    );
}
