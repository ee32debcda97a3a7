//! Test doubles at Engram's true boundaries, never for its own code:
//!
//! - [`ScriptedLlm`]: an OpenAI-compatible HTTP server on a real loopback
//!   socket that answers `/v1/chat/completions` and `/v1/embeddings` from a
//!   script (status, headers, body, delay per request) and records every
//!   request body it received.
//! - [`ManualClock`]: a [`Clock`] tests move by hand.
//! - [`pg`]: a fresh database per test on the throwaway Postgres server.
//! - [`model_alias`]: a real model under another directory name (another
//!   model id), for re-embedding.

pub mod pg;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use engram_core::clock::Clock;
use jiff::Timestamp;
use serde_json::{Value, json};

/// The model files of `model_dir` linked into `root/name`: the same real
/// weights under another directory name, which gives another model id
/// (what a store records) — a second model for re-embedding tests.
pub fn model_alias(
    model_dir: &std::path::Path,
    root: &std::path::Path,
    name: &str,
) -> std::path::PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let entries =
        std::fs::read_dir(model_dir).unwrap_or_else(|e| panic!("{}: {e}", model_dir.display()));
    for entry in entries.map_while(std::io::Result::ok) {
        std::os::unix::fs::symlink(entry.path(), dir.join(entry.file_name()))
            .unwrap_or_else(|e| panic!("linking {}: {e}", entry.path().display()));
    }
    dir
}

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Wait this long before answering (timeouts).
    pub delay: Duration,
}

impl Reply {
    /// A successful chat completion whose message content is `content`.
    pub fn chat(content: &str) -> Reply {
        Reply::completion(content, "stop", 20)
    }

    /// A chat completion cut off at `max_tokens` (`finish_reason: "length"`),
    /// as a model that loops produces.
    pub fn truncated(content: &str) -> Reply {
        Reply::completion(content, "length", 256)
    }

    fn completion(content: &str, finish_reason: &str, completion_tokens: u64) -> Reply {
        Reply::json(
            200,
            json!({
                "id": "chatcmpl-test", "object": "chat.completion", "model": "scripted",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": finish_reason}],
                "usage": {"prompt_tokens": 100, "completion_tokens": completion_tokens,
                          "total_tokens": 100 + completion_tokens},
            }),
        )
    }

    /// A chat completion whose content is `value` serialised.
    pub fn chat_json(value: Value) -> Reply {
        Reply::chat(&value.to_string())
    }

    /// An embeddings answer with one vector per `vectors` entry.
    pub fn embeddings(vectors: &[Vec<f32>]) -> Reply {
        let data: Vec<Value> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": v}))
            .collect();
        Reply::json(
            200,
            json!({"object": "list", "data": data, "model": "scripted"}),
        )
    }

    pub fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    /// An error status with an OpenAI-style error body.
    pub fn error(status: u16, message: &str) -> Reply {
        Reply::json(
            status,
            json!({"error": {"message": message, "type": "scripted"}}),
        )
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

type Responder = Box<dyn Fn(&str, &Value) -> Reply + Send + Sync>;

#[derive(Default)]
struct Script {
    queue: VecDeque<Reply>,
    /// Answers requests the queue does not cover.
    responder: Option<Responder>,
    /// (path, body) of every request, in order.
    received: Vec<(String, Value)>,
    /// Every request body as sent (key order kept), in order.
    received_raw: Vec<String>,
}

/// The scripted server. Dropping it stops the server.
pub struct ScriptedLlm {
    url: String,
    script: Arc<Mutex<Script>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ScriptedLlm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(s: &Mutex<Script>) -> std::sync::MutexGuard<'_, Script> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

async fn answer(
    State(script): State<Arc<Mutex<Script>>>,
    uri: axum::http::Uri,
    body: String,
) -> Response {
    let value: Value = serde_json::from_str(&body).unwrap_or(Value::String(body.clone()));
    let path = uri.path().to_owned();
    let reply = {
        let mut s = lock(&script);
        s.received.push((path.clone(), value.clone()));
        s.received_raw.push(body);
        match s.queue.pop_front() {
            Some(r) => r,
            None => match &s.responder {
                Some(f) => f(&path, &value),
                None => Reply::error(500, "the test script has no answer left"),
            },
        }
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut resp = (
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        reply.body,
    )
        .into_response();
    for (k, v) in reply.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}

impl ScriptedLlm {
    /// Starts on `127.0.0.1:0`. Panics if it cannot bind (a test setup failure).
    pub async fn start() -> ScriptedLlm {
        let script = Arc::new(Mutex::new(Script::default()));
        let app = Router::new()
            .route("/v1/chat/completions", post(answer))
            .route("/v1/embeddings", post(answer))
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the scripted LLM server");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ScriptedLlm {
            url: format!("http://{addr}/v1"),
            script,
            task,
        }
    }

    /// The base URL, with `/v1`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Queues answers, in order.
    pub fn push(&self, replies: impl IntoIterator<Item = Reply>) {
        lock(&self.script).queue.extend(replies);
    }

    /// Answers whatever the queue does not, from the request's path and body.
    pub fn respond_with(&self, f: impl Fn(&str, &Value) -> Reply + Send + Sync + 'static) {
        lock(&self.script).responder = Some(Box::new(f));
    }

    /// The bodies received so far (all paths).
    pub fn received(&self) -> Vec<Value> {
        lock(&self.script)
            .received
            .iter()
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// The bodies received so far, as sent: a `Value` would sort their keys.
    pub fn received_raw(&self) -> Vec<String> {
        lock(&self.script).received_raw.clone()
    }

    pub fn received_count(&self) -> usize {
        lock(&self.script).received.len()
    }
}

/// A clock that moves only when told.
pub struct ManualClock(Mutex<Timestamp>);

impl ManualClock {
    pub fn new(at: Timestamp) -> Arc<ManualClock> {
        Arc::new(ManualClock(Mutex::new(at)))
    }

    pub fn advance(&self, d: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *t = t
            .checked_add(jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::ZERO))
            .unwrap_or(*t);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
