//! The LLM port: a chat model that answers with JSON matching a schema.
//!
//! Adapters (`engram-llm`: any OpenAI-compatible `/v1/chat/completions`)
//! implement [`Llm`] with their own timeouts, retries and circuit breaker.
//! This module owns what does not depend on the transport: tolerant parsing
//! of a model's JSON answer (code fences, thinking tags, prose around it) and
//! the one repair round-trip when the answer still does not parse
//! ([`chat_json`]).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::Result;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn system(content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: "system".into(),
            content: content.into(),
        }
    }

    pub fn user(content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: "user".into(),
            content: content.into(),
        }
    }

    pub fn assistant(content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: "assistant".into(),
            content: content.into(),
        }
    }
}

/// A JSON Schema the answer must match, with a name (OpenAI's `json_schema.name`).
///
/// Kept as the JSON text it was written as: a grammar-constrained decoder
/// (llama.cpp, vLLM, Ollama) emits properties in the order the schema lists
/// them, so the order is part of the prompt — `text` before `entities` lets a
/// small model write the fact before the details, instead of looping in the
/// details. A `serde_json::Value` would sort the keys alphabetically.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonSchema {
    name: String,
    text: String,
}

impl JsonSchema {
    /// A schema from its JSON text (property order kept). Fails when the text is not JSON.
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Result<JsonSchema> {
        let text = text.into();
        serde_json::from_str::<serde::de::IgnoredAny>(&text)
            .map_err(|e| crate::Error::internal(format!("a JSON schema is not JSON: {e}")))?;
        Ok(JsonSchema {
            name: name.into(),
            text,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The schema's JSON text, in the order it was written.
    pub fn text(&self) -> &str {
        &self.text
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    /// Ask for structured output matching this schema.
    pub schema: Option<JsonSchema>,
    pub temperature: f32,
    pub max_tokens: Option<u32>,
}

/// Tokens a call used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    pub fn add(&mut self, other: Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    /// The assistant message's text.
    pub content: String,
    pub usage: Usage,
    /// The answer stopped at `max_tokens` (`finish_reason: "length"`): its
    /// JSON is cut off, usually because the model looped.
    pub truncated: bool,
}

/// Calls waiting for and holding the provider's concurrency slots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LlmQueue {
    /// Calls holding a slot (sent, not yet answered).
    pub in_flight: usize,
    /// Calls waiting for a slot.
    pub waiting: usize,
    /// Slots (`--llm-concurrency`).
    pub limit: usize,
}

/// Whether calls go through (the circuit breaker's state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LlmState {
    /// Calls go through.
    Closed,
    /// Recent calls failed; calls fail fast until the cool-down ends.
    Open,
    /// The cool-down ended; one probe call decides.
    HalfOpen,
}

impl LlmState {
    pub fn as_str(self) -> &'static str {
        match self {
            LlmState::Closed => "closed",
            LlmState::Open => "open",
            LlmState::HalfOpen => "half_open",
        }
    }
}

/// A chat model.
#[async_trait]
pub trait Llm: Send + Sync + 'static {
    /// The model name, for logs and accounting.
    fn model(&self) -> &str;

    /// One chat completion. Fails with [`ErrorCode::LlmUnavailable`] when
    /// the provider cannot be reached or the circuit is open, and with
    /// [`ErrorCode::LlmFailure`] when it answers with an error.
    async fn chat(&self, request: ChatRequest) -> Result<ChatResponse>;

    fn state(&self) -> LlmState;

    /// The calls in flight and waiting, when the adapter bounds concurrency.
    fn queue(&self) -> Option<LlmQueue> {
        None
    }

    /// Estimated cost in US dollars of `usage` at the configured prices (0 when none are).
    fn cost_usd(&self, usage: &Usage) -> f64 {
        let _ = usage;
        0.0
    }
}
