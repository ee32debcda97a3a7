//! OpenAI-compatible clients for Engram: chat completions ([`OpenAiChat`],
//! implementing [`engram_core::ports::Llm`]) and embeddings ([`OpenAiEmbedder`],
//! implementing [`engram_core::ports::Embedder`]). They talk to OpenAI,
//! Ollama, vLLM, llama.cpp's server, LM Studio — anything that serves
//! `/v1/chat/completions` and `/v1/embeddings`.
//!
//! Every call has a timeout; failures that may pass (connection errors,
//! timeouts, 429, 5xx) are retried with exponential backoff and full jitter,
//! honouring `Retry-After` on 429 and 503; after `breaker_threshold` calls in
//! a row fail, a circuit breaker fails calls fast for `breaker_cooldown`, then
//! lets one probe through. Structured output is asked for with
//! `response_format: json_schema`; a provider that rejects it gets the schema
//! in the prompt instead (remembered for later calls), and
//! [`engram_core::pipeline::chat_json`] parses leniently with one repair round.
//!
//! Architecture invariant: this crate knows HTTP and the OpenAI wire format,
//! nothing about memories; it implements core's ports.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use engram_core::clock::Clock;
use engram_core::ports::Embedder;
use engram_core::ports::ModelInfo;
use engram_core::ports::{ChatMessage, ChatRequest, ChatResponse, Llm, LlmQueue, LlmState, Usage};
use engram_core::{Error, ErrorCode, Result};
use jiff::Timestamp;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

/// Where and how to call a provider.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URL including `/v1`, e.g. `https://api.openai.com/v1` or `http://127.0.0.1:11434/v1`.
    pub base_url: String,
    pub model: String,
    pub api_key: Option<String>,
    /// Per HTTP call.
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Longest `Retry-After` honoured; a provider asking for more fails the call (the job retries later).
    pub retry_after_max: Duration,
    /// Calls in a row that must fail before the circuit opens.
    pub breaker_threshold: u32,
    pub breaker_cooldown: Duration,
    /// USD per 1,000 prompt / completion tokens, for cost accounting (0: not counted).
    pub price_prompt_per_1k: f64,
    pub price_completion_per_1k: f64,
    /// Chat calls in flight at once towards this provider; more wait their turn.
    pub concurrency: usize,
}

impl ClientConfig {
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> ClientConfig {
        ClientConfig {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            // A CPU-local model (llama.cpp, Ollama) takes tens of seconds per call on a busy machine.
            timeout: Duration::from_secs(180),
            max_retries: 3,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            retry_after_max: Duration::from_secs(120),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(30),
            price_prompt_per_1k: 0.0,
            price_completion_per_1k: 0.0,
            concurrency: 2,
        }
    }
}

/// How the client waits between retries (tests record instead of sleeping).
#[async_trait]
pub trait Sleeper: Send + Sync + 'static {
    async fn sleep(&self, d: Duration);
}

/// Tokio's sleep.
pub struct TokioSleeper;

#[async_trait]
impl Sleeper for TokioSleeper {
    async fn sleep(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }
}

/// The circuit breaker's memory.
#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    opened_at: Option<Timestamp>,
    probing: bool,
}

impl Breaker {
    fn state(&self, now: Timestamp, cooldown: Duration) -> LlmState {
        match self.opened_at {
            None => LlmState::Closed,
            Some(t) if elapsed(t, now) < cooldown => LlmState::Open,
            Some(_) => LlmState::HalfOpen,
        }
    }

    fn admit(&mut self, now: Timestamp, cooldown: Duration) -> Result<()> {
        match self.state(now, cooldown) {
            LlmState::Closed => Ok(()),
            LlmState::Open => {
                let left = cooldown.saturating_sub(elapsed(self.opened_at.unwrap_or(now), now));
                Err(Error::new(
                    ErrorCode::LlmUnavailable,
                    format!(
                        "the LLM circuit is open after repeated failures; next try in {}s",
                        left.as_secs() + 1
                    ),
                ))
            }
            LlmState::HalfOpen if self.probing => Err(Error::new(
                ErrorCode::LlmUnavailable,
                "the LLM circuit is half-open and a probe call is in flight",
            )),
            LlmState::HalfOpen => {
                self.probing = true;
                Ok(())
            }
        }
    }

    fn success(&mut self) {
        *self = Breaker::default();
    }

    fn failure(&mut self, now: Timestamp, threshold: u32) {
        self.failures += 1;
        let probe_failed = self.probing;
        self.probing = false;
        if probe_failed || self.failures >= threshold {
            self.opened_at = Some(now);
        }
    }
}

fn elapsed(from: Timestamp, to: Timestamp) -> Duration {
    Duration::try_from(to.duration_since(from)).unwrap_or(Duration::ZERO)
}

/// One attempt's failure.
enum Attempt {
    /// May pass on retry; with the provider's `Retry-After`, if any.
    Retry(String, Option<Duration>),
    /// Will not pass by retrying (4xx, bad answer).
    Fatal(String),
    /// The provider does not support `response_format: json_schema`.
    NoStructuredOutput,
}

/// A request body, serialised once (a schema inside keeps its property order).
struct Body {
    json: String,
    /// It asks for `response_format: json_schema`.
    structured: bool,
}

impl Body {
    fn of(value: &impl serde::Serialize, structured: bool) -> Result<Body> {
        let json = serde_json::to_string(value)
            .map_err(|e| Error::internal(format!("serialising a request: {e}")))?;
        Ok(Body { json, structured })
    }
}

/// `/v1/chat/completions`'s request.
#[derive(serde::Serialize)]
struct ChatBody<'a> {
    model: &'a str,
    messages: &'a [ChatMessage],
    temperature: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<ResponseFormat<'a>>,
}

#[derive(serde::Serialize)]
struct ResponseFormat<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    json_schema: SchemaFormat<'a>,
}

#[derive(serde::Serialize)]
struct SchemaFormat<'a> {
    name: &'a str,
    strict: bool,
    /// The schema's own text: serde_json would sort a `Value`'s keys.
    schema: &'a RawValue,
}

/// The HTTP side both clients share: one POST with timeout, retries and the breaker.
struct Transport {
    http: reqwest::Client,
    cfg: ClientConfig,
    breaker: Mutex<Breaker>,
    sleeper: Arc<dyn Sleeper>,
    clock: Arc<dyn Clock>,
    /// `llm` or `embeddings`, for metric labels.
    kind: &'static str,
}

fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// `Retry-After`: seconds or an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap, now: Timestamp) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = jiff::fmt::rfc2822::parse(v).ok()?.timestamp();
    Some(elapsed(now, at))
}

impl Transport {
    fn new(
        cfg: ClientConfig,
        sleeper: Arc<dyn Sleeper>,
        clock: Arc<dyn Clock>,
        kind: &'static str,
    ) -> Result<Transport> {
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| Error::internal(format!("http client: {e}")))?;
        Ok(Transport {
            http,
            cfg,
            breaker: Mutex::new(Breaker::default()),
            sleeper,
            clock,
            kind,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        // A panic while holding the lock leaves a valid breaker behind.
        self.breaker.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn state(&self) -> LlmState {
        self.lock()
            .state(self.clock.now(), self.cfg.breaker_cooldown)
    }

    fn publish_state(&self) {
        let v = match self.state() {
            LlmState::Closed => 0.0,
            LlmState::HalfOpen => 1.0,
            LlmState::Open => 2.0,
        };
        metrics::gauge!("engram_llm_circuit_state", "client" => self.kind).set(v);
    }

    async fn once(&self, path: &str, body: &Body) -> std::result::Result<Value, Attempt> {
        let url = format!("{}/{path}", self.cfg.base_url.trim_end_matches('/'));
        let mut req = self
            .http
            .post(&url)
            .timeout(self.cfg.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.json.clone());
        if let Some(key) = &self.cfg.api_key {
            req = req.bearer_auth(key);
        }
        // Transport failures may pass on retry; a timeout says how long it waited.
        let failed = |e: reqwest::Error, doing: &str| {
            let why = if e.is_timeout() {
                format!("no answer within {:?}", self.cfg.timeout)
            } else {
                format!("{doing}: {e}")
            };
            Attempt::Retry(why, None)
        };
        let resp = req
            .send()
            .await
            .map_err(|e| failed(e, &format!("cannot reach {url}")))?;
        let status = resp.status();
        let after = retry_after(resp.headers(), self.clock.now());
        let text = resp
            .text()
            .await
            .map_err(|e| failed(e, "reading the answer"))?;
        if status.is_success() {
            return serde_json::from_str(&text)
                .map_err(|e| Attempt::Fatal(format!("the provider answered invalid JSON: {e}")));
        }
        let message = format!("{status}{}", redacted(&text));
        if status.as_u16() == 429 || status.is_server_error() {
            let honoured = if matches!(status.as_u16(), 429 | 503) {
                after
            } else {
                None
            };
            return Err(Attempt::Retry(message, honoured));
        }
        if status.as_u16() == 400
            && body.structured
            && (text.contains("response_format") || text.contains("json_schema"))
        {
            return Err(Attempt::NoStructuredOutput);
        }
        Err(Attempt::Fatal(message))
    }

    /// POSTs with retries; maps the outcome to core errors and the breaker.
    async fn post(&self, path: &str, body: &Body) -> std::result::Result<Value, Attempt> {
        self.lock()
            .admit(self.clock.now(), self.cfg.breaker_cooldown)
            .map_err(|e| Attempt::Fatal(format!("rejected:{}", e.message)))?;
        let started = std::time::Instant::now();
        let mut attempt = 0;
        let outcome = loop {
            match self.once(path, body).await {
                Err(Attempt::Retry(why, after)) if attempt < self.cfg.max_retries => {
                    let delay = match after {
                        Some(d) if d > self.cfg.retry_after_max => {
                            break Err(Attempt::Retry(
                                format!(
                                    "{why} (the provider asks to wait {}s, longer than allowed)",
                                    d.as_secs()
                                ),
                                None,
                            ));
                        }
                        Some(d) => d,
                        None => {
                            let cap = self
                                .cfg
                                .backoff_base
                                .saturating_mul(1u32 << attempt.min(16))
                                .min(self.cfg.backoff_max);
                            cap.mul_f64(random_unit())
                        }
                    };
                    metrics::counter!("engram_llm_retries_total", "client" => self.kind)
                        .increment(1);
                    tracing::warn!(client = self.kind, attempt, delay_ms = delay.as_millis() as u64, reason = %why, "LLM provider call failed; retrying");
                    self.sleeper.sleep(delay).await;
                    attempt += 1;
                }
                other => break other,
            }
        };
        metrics::histogram!("engram_llm_duration_seconds", "client" => self.kind)
            .record(started.elapsed().as_secs_f64());
        let now = self.clock.now();
        match &outcome {
            Ok(_) | Err(Attempt::Fatal(_)) | Err(Attempt::NoStructuredOutput) => {
                // The provider answered: it is up, even if it refused this request.
                self.lock().success();
            }
            Err(Attempt::Retry(..)) => self.lock().failure(now, self.cfg.breaker_threshold),
        }
        let label = match &outcome {
            Ok(_) => "ok",
            Err(Attempt::Retry(..)) => "unavailable",
            Err(_) => "error",
        };
        metrics::counter!("engram_llm_requests_total", "client" => self.kind, "outcome" => label)
            .increment(1);
        self.publish_state();
        outcome
    }
}

fn to_error(a: Attempt) -> Error {
    match a {
        Attempt::Retry(why, _) => Error::new(
            ErrorCode::LlmUnavailable,
            format!("LLM provider unavailable: {why}"),
        ),
        Attempt::Fatal(why) => match why.strip_prefix("rejected:") {
            Some(why) => Error::new(ErrorCode::LlmUnavailable, why),
            None => Error::new(ErrorCode::LlmFailure, format!("LLM provider error: {why}")),
        },
        Attempt::NoStructuredOutput => Error::new(
            ErrorCode::LlmFailure,
            "the provider rejected structured output",
        ),
    }
}

/// Chat completions over `/v1/chat/completions`.
pub struct OpenAiChat {
    t: Transport,
    /// Cleared when the provider rejects `response_format: json_schema`.
    structured: AtomicBool,
    /// One permit per call the provider may hold at once (`--llm-concurrency`):
    /// a CPU-local server with one slot answers one call at a time, and
    /// more calls only queue there, each eating its own timeout.
    slots: Semaphore,
    limit: usize,
    waiting: AtomicUsize,
}

impl OpenAiChat {
    pub fn new(
        cfg: ClientConfig,
        sleeper: Arc<dyn Sleeper>,
        clock: Arc<dyn Clock>,
    ) -> Result<OpenAiChat> {
        let limit = cfg.concurrency.max(1);
        let chat = OpenAiChat {
            t: Transport::new(cfg, sleeper, clock, "chat")?,
            structured: AtomicBool::new(true),
            slots: Semaphore::new(limit),
            limit,
            waiting: AtomicUsize::new(0),
        };
        chat.t.publish_state();
        chat.publish_queue();
        Ok(chat)
    }

    fn body(&self, req: &ChatRequest, structured: bool) -> Result<Body> {
        let mut messages = req.messages.clone();
        if let (Some(schema), false) = (&req.schema, structured) {
            // No structured output: the schema travels in the prompt.
            let note = format!(
                "Answer with a single JSON value that matches this JSON Schema, and nothing else:\n{}",
                schema.text()
            );
            match messages.first_mut() {
                Some(m) if m.role == "system" => {
                    m.content.push_str("\n\n");
                    m.content.push_str(&note);
                }
                _ => messages.insert(0, ChatMessage::system(note)),
            }
        }
        let raw = match (&req.schema, structured) {
            (Some(schema), true) => Some(
                RawValue::from_string(schema.text().to_owned())
                    .map_err(|e| Error::internal(format!("a JSON schema is not JSON: {e}")))?,
            ),
            _ => None,
        };
        let body = ChatBody {
            model: &self.t.cfg.model,
            messages: &messages,
            temperature: req.temperature,
            max_tokens: req.max_tokens,
            response_format: match (&req.schema, &raw) {
                (Some(schema), Some(raw)) => Some(ResponseFormat {
                    kind: "json_schema",
                    json_schema: SchemaFormat {
                        name: schema.name(),
                        strict: true,
                        schema: raw,
                    },
                }),
                _ => None,
            },
        };
        Body::of(&body, raw.is_some())
    }

    fn queue_now(&self) -> LlmQueue {
        let free = self.slots.available_permits();
        LlmQueue {
            in_flight: self.limit.saturating_sub(free),
            waiting: self.waiting.load(Ordering::Relaxed),
            limit: self.limit,
        }
    }

    fn publish_queue(&self) {
        let q = self.queue_now();
        metrics::gauge!("engram_llm_in_flight").set(q.in_flight as f64);
        metrics::gauge!("engram_llm_waiting").set(q.waiting as f64);
        metrics::gauge!("engram_llm_concurrency").set(q.limit as f64);
    }

    /// One call, holding a slot.
    async fn call(&self, request: &ChatRequest) -> Result<ChatResponse> {
        let structured = request.schema.is_some() && self.structured.load(Ordering::Relaxed);
        let answer = match self.t.post("chat/completions", &self.body(request, structured)?).await {
            Err(Attempt::NoStructuredOutput) => {
                tracing::info!(model = %self.t.cfg.model, "provider rejects json_schema output; sending the schema in the prompt from now on");
                self.structured.store(false, Ordering::Relaxed);
                self.t
                    .post("chat/completions", &self.body(request, false)?)
                    .await
            }
            other => other,
        }
        .map_err(to_error)?;
        let choice = &answer["choices"][0];
        let content = choice["message"]["content"]
            .as_str()
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::LlmFailure,
                    "the provider's answer has no choices[0].message.content",
                )
            })?
            .to_owned();
        let usage = Usage {
            prompt_tokens: answer["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
            completion_tokens: answer["usage"]["completion_tokens"].as_u64().unwrap_or(0),
        };
        self.account(usage);
        let truncated = choice["finish_reason"].as_str() == Some("length");
        if truncated {
            metrics::counter!("engram_llm_truncated_total").increment(1);
            tracing::warn!(model = %self.t.cfg.model, max_tokens = ?request.max_tokens, completion_tokens = usage.completion_tokens, "the model's answer was cut off at max_tokens");
        }
        Ok(ChatResponse {
            content,
            usage,
            truncated,
        })
    }

    fn account(&self, usage: Usage) {
        let cfg = &self.t.cfg;
        metrics::counter!("engram_llm_tokens_total", "kind" => "prompt")
            .increment(usage.prompt_tokens);
        metrics::counter!("engram_llm_tokens_total", "kind" => "completion")
            .increment(usage.completion_tokens);
        let cost = usage.prompt_tokens as f64 / 1000.0 * cfg.price_prompt_per_1k
            + usage.completion_tokens as f64 / 1000.0 * cfg.price_completion_per_1k;
        if cost > 0.0 {
            // Counted in micro-dollars: counters are integers.
            metrics::counter!("engram_llm_cost_microdollars_total")
                .increment((cost * 1e6).round() as u64);
        }
    }
}

#[async_trait]
impl Llm for OpenAiChat {
    fn model(&self) -> &str {
        &self.t.cfg.model
    }

    async fn chat(&self, request: ChatRequest) -> Result<ChatResponse> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        self.publish_queue();
        let permit = self.slots.acquire().await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        // The semaphore is never closed, so the permit is always granted.
        let answer = match permit {
            Ok(_slot) => {
                self.publish_queue();
                self.call(&request).await
            }
            Err(_) => Err(Error::internal("the LLM slots were closed")),
        };
        self.publish_queue();
        answer
    }

    fn queue(&self) -> Option<LlmQueue> {
        Some(self.queue_now())
    }

    fn state(&self) -> LlmState {
        self.t.state()
    }

    fn cost_usd(&self, usage: &Usage) -> f64 {
        let cfg = &self.t.cfg;
        usage.prompt_tokens as f64 / 1000.0 * cfg.price_prompt_per_1k
            + usage.completion_tokens as f64 / 1000.0 * cfg.price_completion_per_1k
    }
}

/// Embeddings over `/v1/embeddings`. The dimension is learnt from one probe
/// call at start (or given), recorded in the model id, and every answer is
/// checked against it.
pub struct OpenAiEmbedder {
    t: Transport,
    info: ModelInfo,
}

impl OpenAiEmbedder {
    /// Connects and learns the model's dimension with one probe embedding.
    pub async fn connect(
        cfg: ClientConfig,
        sleeper: Arc<dyn Sleeper>,
        clock: Arc<dyn Clock>,
    ) -> Result<OpenAiEmbedder> {
        let mut e = OpenAiEmbedder {
            info: ModelInfo {
                id: format!("openai:{}", cfg.model),
                dim: 0,
            },
            t: Transport::new(cfg, sleeper, clock, "embeddings")?,
        };
        let probe = e.call(&["dimension probe".to_owned()]).await?;
        let dim = probe.first().map(Vec::len).unwrap_or(0);
        if dim == 0 {
            return Err(Error::embedder(
                "the embeddings endpoint returned an empty vector",
            ));
        }
        e.info.dim = dim;
        Ok(e)
    }

    /// The model id (`openai:<model>`) and the dimension learnt at connect.
    pub fn model_info(&self) -> &ModelInfo {
        &self.info
    }

    async fn call(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let body = Body::of(&json!({"model": self.t.cfg.model, "input": texts}), false)?;
        let answer = self.t.post("embeddings", &body).await.map_err(|a| {
            let e = to_error(a);
            Error::embedder(e.message)
        })?;
        let mut items: Vec<(usize, Vec<f32>)> = answer["data"]
            .as_array()
            .ok_or_else(|| Error::embedder("the embeddings answer has no `data` list"))?
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let idx = d["index"].as_u64().map(|x| x as usize).unwrap_or(i);
                let v: Vec<f32> = d["embedding"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_f64)
                            .map(|x| x as f32)
                            .collect()
                    })
                    .unwrap_or_default();
                (idx, v)
            })
            .collect();
        items.sort_by_key(|(i, _)| *i);
        if items.len() != texts.len() {
            return Err(Error::embedder(format!(
                "asked for {} embeddings, got {}",
                texts.len(),
                items.len()
            )));
        }
        Ok(items
            .into_iter()
            .map(|(_, mut v)| {
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                if n > 0.0 {
                    v.iter_mut().for_each(|x| *x /= n);
                }
                v
            })
            .collect())
    }
}

#[async_trait]
impl Embedder for OpenAiEmbedder {
    fn model(&self) -> &ModelInfo {
        &self.info
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let vectors = self.call(texts).await?;
        if let Some(v) = vectors.iter().find(|v| v.len() != self.info.dim) {
            return Err(Error::new(
                ErrorCode::EmbeddingModelMismatch,
                format!(
                    "the embeddings endpoint answered {} dimensions; `{}` had {} when Engram started",
                    v.len(),
                    self.info.id,
                    self.info.dim
                ),
            ));
        }
        Ok(vectors)
    }

    /// Remote tokenizers are unknown: about four characters per token.
    fn count_tokens(&self, text: &str) -> usize {
        text.chars().count().div_ceil(4)
    }
}

/// What of a provider's error body may be logged and stored (a job's
/// `last_error` outlives requests, and erasure cannot reach logs): the
/// OpenAI-style `error.type` and `error.code` when they are short
/// identifiers — never `error.message` or free text, which can quote the
/// prompt, and so the user's words.
fn redacted(body: &str) -> String {
    let v: serde_json::Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(_) => return " (the provider's answer is not shown: it may quote the request)".into(),
    };
    let ident = |f: &str| {
        v["error"][f]
            .as_str()
            .filter(|s| {
                !s.is_empty()
                    && s.len() <= 64
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
            })
            .map(|s| format!("{f} {s}"))
    };
    let parts: Vec<String> = ["type", "code"].into_iter().filter_map(ident).collect();
    if parts.is_empty() {
        " (the provider's message is not shown: it may quote the request)".into()
    } else {
        format!(
            " ({}; the provider's message is not shown)",
            parts.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn breaker_opens_cools_down_and_probes() {
        let cd = Duration::from_secs(30);
        let mut b = Breaker::default();
        for _ in 0..2 {
            b.admit(ts(0), cd).unwrap();
            b.failure(ts(0), 3);
        }
        assert_eq!(b.state(ts(0), cd), LlmState::Closed);
        b.failure(ts(1), 3);
        assert_eq!(b.state(ts(2), cd), LlmState::Open);
        assert_eq!(
            b.admit(ts(2), cd).unwrap_err().code,
            ErrorCode::LlmUnavailable
        );
        assert_eq!(b.state(ts(31), cd), LlmState::HalfOpen);
        b.admit(ts(31), cd).unwrap();
        assert!(b.admit(ts(31), cd).is_err(), "one probe at a time");
        b.failure(ts(32), 3);
        assert_eq!(
            b.state(ts(33), cd),
            LlmState::Open,
            "a failed probe reopens"
        );
        b.admit(ts(70), cd).unwrap();
        b.success();
        assert_eq!(b.state(ts(70), cd), LlmState::Closed);
    }
}
