//! Wire types of the native REST API and their conversions to domain types.
//! Every request type rejects unknown fields, so a typo is a clear 400.

use engram_core::filter::{Filter, parse_timestamp};
use engram_core::memory::{Entity, HistoryEvent, Memory, MemoryKind, Scope};
use engram_core::service::{AddInput, Content, Explanation, Message};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;

/// A chat message.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageIn {
    /// `user`, `assistant`, `system` or `tool`.
    pub role: String,
    pub content: String,
    /// Optional speaker name; stored as a `Name: ` prefix of the memory text.
    #[serde(default)]
    pub name: Option<String>,
}

/// `POST /v1/memories`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddRequest {
    /// Messages to remember (one memory per turn; long turns split by sentence). Give this or `text`.
    pub messages: Option<Vec<MessageIn>>,
    /// A text to remember. Give this or `messages`.
    pub text: Option<String>,
    pub user_id: Option<String>,
    pub agent_id: Option<String>,
    pub run_id: Option<String>,
    pub org_id: Option<String>,
    pub app_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    pub categories: Option<Vec<String>>,
    /// `semantic` (default), `episodic` or `procedural`.
    #[schema(value_type = Option<String>)]
    pub kind: Option<MemoryKind>,
    /// Extract facts with the LLM (when one is configured). Without an LLM, content is stored verbatim.
    pub infer: Option<bool>,
    /// Time after which the memory is no longer returned: RFC 3339, a date, or Unix seconds.
    #[schema(schema_with = time_schema)]
    pub expires_at: Option<Value>,
    /// A sliding expiry in seconds: the memory expires this long after its
    /// last use (a read that returns it, or a write), within the scope
    /// policy's bounds (at least 60). Without this or `expires_at`, the scope's
    /// policy decides (session memories: the session TTL).
    #[schema(minimum = 60)]
    pub ttl_seconds: Option<u64>,
    /// When the content was said (RFC 3339, a date, or Unix seconds); defaults to now.
    #[schema(schema_with = time_schema)]
    pub timestamp: Option<Value>,
    /// Queue the add and answer `202 {"job_id", "status": "queued"}` at once; the
    /// job survives restarts (see `GET /v1/jobs/{id}`). Default: false.
    #[serde(rename = "async")]
    pub run_async: Option<bool>,
}

/// A time field: an RFC 3339 string (or a date), Unix seconds, or null.
fn time_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String))
        .item(ObjectBuilder::new().schema_type(Type::Number))
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .into()
}

/// `202` answer of an asynchronous add.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobAccepted {
    pub job_id: Uuid,
    /// `queued`.
    pub status: String,
}

impl AddRequest {
    /// The domain input: exactly one of `messages` (non-empty) or `text`, times parsed.
    /// Shared by the REST handler and `engram import`.
    pub fn into_input(self) -> Result<AddInput, ApiError> {
        let messages = self
            .messages
            .map(|m| m.into_iter().map(Into::into).collect());
        let content = Content::new(messages, self.text)?;
        Ok(AddInput {
            content,
            scope: Scope {
                org_id: self.org_id,
                app_id: self.app_id,
                user_id: self.user_id,
                agent_id: self.agent_id,
                run_id: self.run_id,
            },
            metadata: self.metadata.unwrap_or_default(),
            categories: self.categories.unwrap_or_default(),
            kind: self.kind.unwrap_or_default(),
            expires_at: time_field(self.expires_at.as_ref(), "expires_at")?,
            ttl: self
                .ttl_seconds
                .map(|s| {
                    i64::try_from(s)
                        .map(jiff::SignedDuration::from_secs)
                        .map_err(|_| ApiError::invalid("`ttl_seconds` is too large"))
                })
                .transpose()?,
            timestamp: time_field(self.timestamp.as_ref(), "timestamp")?,
        })
    }
}

/// One result of an add.
#[derive(Debug, Serialize, ToSchema)]
pub struct AddResultOut {
    pub id: Uuid,
    pub memory: String,
    /// `ADD` or `NOOP` (an exact or near-duplicate of a memory in the same scope).
    pub event: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AddResponse {
    pub results: Vec<AddResultOut>,
}

/// `POST /v1/memories/search`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    #[schema(min_length = 1)]
    pub query: String,
    /// Mem0 filter language; must name at least one scope id. Top-level scope ids are ANDed in.
    #[schema(value_type = Option<Object>)]
    pub filters: Option<Value>,
    pub user_id: Option<String>,
    pub agent_id: Option<String>,
    pub run_id: Option<String>,
    pub org_id: Option<String>,
    pub app_id: Option<String>,
    /// Most results to return (default 10, at most the server's maximum, 100 by default).
    #[schema(minimum = 1)]
    pub top_k: Option<usize>,
    /// Lowest final score returned, in [0, 1].
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub threshold: Option<f32>,
    /// Token budget for the returned memories (0 = unlimited; default from the server config).
    pub token_budget: Option<usize>,
    /// Include per-signal scores in each hit.
    #[serde(default)]
    pub explain: bool,
    /// Answer as the memory stood at this time (RFC 3339): the versions current
    /// then, including ones since updated or deleted. Default: now.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub as_of: Option<Value>,
}

/// A memory as the API returns it.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemoryOut {
    pub id: Uuid,
    pub memory: String,
    pub hash: String,
    /// `semantic`, `episodic` or `procedural`.
    #[schema(value_type = String)]
    pub kind: MemoryKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    pub categories: Vec<String>,
    #[schema(value_type = Vec<Object>)]
    pub entities: Vec<Entity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub version: u32,
    pub tokens: u32,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
    /// Seconds of the sliding expiry: each use moves `expires_at` to then plus this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
    /// A user's rating: `POSITIVE`, `NEGATIVE` or `VERY_NEGATIVE`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub feedback: Option<engram_core::memory::Feedback>,
}

impl From<Memory> for MemoryOut {
    fn from(m: Memory) -> Self {
        MemoryOut {
            id: m.id,
            memory: m.text,
            hash: m.hash,
            kind: m.kind,
            user_id: m.scope.user_id,
            agent_id: m.scope.agent_id,
            run_id: m.scope.run_id,
            org_id: m.scope.org_id,
            app_id: m.scope.app_id,
            metadata: m.metadata,
            categories: m.categories,
            entities: m.entities,
            role: m.role,
            version: m.version,
            tokens: m.tokens,
            created_at: m.created_at,
            updated_at: m.updated_at,
            expires_at: m.expires_at,
            ttl_seconds: m.idle_ttl.map(|d| d.as_secs()),
            feedback: m.feedback,
        }
    }
}

/// A search hit: the memory, its score and, on request, why.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchHitOut {
    #[serde(flatten)]
    pub memory: MemoryOut,
    pub score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub explanation: Option<Explanation>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResponse {
    pub results: Vec<SearchHitOut>,
    /// Tokens used by the returned memories.
    pub tokens: usize,
}

/// `GET /v1/memories` and `DELETE /v1/memories` query.
#[derive(Debug, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    pub user_id: Option<String>,
    pub agent_id: Option<String>,
    pub run_id: Option<String>,
    pub org_id: Option<String>,
    pub app_id: Option<String>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl ListQuery {
    pub fn scope(&self) -> Scope {
        Scope {
            org_id: self.org_id.clone(),
            app_id: self.app_id.clone(),
            user_id: self.user_id.clone(),
            agent_id: self.agent_id.clone(),
            run_id: self.run_id.clone(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ListResponse {
    pub results: Vec<MemoryOut>,
    pub next_cursor: Option<String>,
}

/// `PATCH /v1/memories/{id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    pub text: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    pub categories: Option<Vec<String>>,
    /// RFC 3339 time, a date or Unix seconds; `null` removes the expiry.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(schema_with = time_schema)]
    pub expires_at: Option<Option<Value>>,
}

fn double_option<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<Value>>, D::Error> {
    Ok(Some(Option::<Value>::deserialize(d)?))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeleteResponse {
    pub id: Uuid,
    pub deleted: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeleteAllResponse {
    pub deleted: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryOut {
    pub id: Uuid,
    pub memory_id: Uuid,
    /// `ADD`, `UPDATE` or `DELETE`.
    pub event: String,
    pub old_memory: Option<String>,
    pub new_memory: Option<String>,
    pub version: u32,
    pub actor: Option<String>,
    /// Why (the LLM's reason for a consolidation decision).
    pub reason: Option<String>,
    pub request_id: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

impl From<HistoryEvent> for HistoryOut {
    fn from(h: HistoryEvent) -> Self {
        HistoryOut {
            id: h.id,
            memory_id: h.memory_id,
            event: h.event.as_str().to_owned(),
            old_memory: h.old_text,
            new_memory: h.new_text,
            version: h.version,
            actor: h.actor,
            reason: h.reason,
            request_id: h.request_id,
            created_at: h.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryResponse {
    pub results: Vec<HistoryOut>,
}

/// Parses an optional time field.
pub fn time_field(v: Option<&Value>, name: &str) -> Result<Option<Timestamp>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => parse_timestamp(v, name)
            .map(Some)
            .map_err(|e| ApiError::invalid(e.message)),
    }
}

/// `filters` ANDed with the top-level scope ids ([`Filter::with_ids`]).
pub fn search_filter(filters: Option<&Value>, ids: Scope) -> Result<Filter, ApiError> {
    Ok(Filter::with_ids(filters, &ids)?)
}

impl From<MessageIn> for Message {
    fn from(m: MessageIn) -> Self {
        Message {
            role: m.role,
            content: m.content,
            name: m.name,
        }
    }
}
