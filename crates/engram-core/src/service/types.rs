//! The service's inputs and outputs, and the limits every transport shares.

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::filter::Filter;
use crate::fusion::SignalScores;
use crate::memory::{Event, Memory, MemoryId, MemoryKind, Metadata, Scope};
use crate::ports::{Cursor, VectorPath};
use crate::{Error, Result};

/// A chat message.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
    /// The speaker's name, when the caller gives one; stored as a `Name: ` prefix.
    pub name: Option<String>,
}

/// What to remember.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Content {
    Text(String),
    Messages(Vec<Message>),
}

impl Content {
    /// What an add carries, the one rule for every transport: exactly one
    /// of `messages` (not empty) or `text`.
    pub fn new(messages: Option<Vec<Message>>, text: Option<String>) -> Result<Content> {
        match (messages, text) {
            (Some(m), None) if !m.is_empty() => Ok(Content::Messages(m)),
            (None, Some(t)) => Ok(Content::Text(t)),
            (Some(_), None) => Err(Error::invalid("`messages` must not be empty")),
            (Some(_), Some(_)) => Err(Error::invalid("give either `messages` or `text`, not both")),
            (None, None) => Err(Error::invalid("give `messages` or `text`")),
        }
    }
}

/// Input of [`MemoryService::add`].
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct AddInput {
    pub content: Content,
    pub scope: Scope,
    pub metadata: Metadata,
    pub categories: Vec<String>,
    pub kind: MemoryKind,
    /// A fixed expiry.
    pub expires_at: Option<Timestamp>,
    /// A sliding expiry (moved forward by each use), within the scope
    /// policy's bounds; without this or `expires_at`, the policy decides.
    #[serde(default)]
    pub ttl: Option<SignedDuration>,
    /// When the content was said; defaults to now (imports and evaluations set it).
    pub timestamp: Option<Timestamp>,
}

impl AddInput {
    /// `content` in `scope`, everything else by default: no metadata or
    /// categories, a semantic memory, the scope policy's expiry, said now.
    pub fn new(content: Content, scope: Scope) -> AddInput {
        AddInput {
            content,
            scope,
            metadata: Metadata::default(),
            categories: Vec::new(),
            kind: MemoryKind::default(),
            expires_at: None,
            ttl: None,
            timestamp: None,
        }
    }
}

/// One outcome of an add.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct AddResult {
    pub id: MemoryId,
    pub memory: String,
    pub event: Event,
}

/// Input of [`MemoryService::search`].
#[derive(Debug, Clone)]
pub struct SearchInput {
    pub query: String,
    pub filter: Filter,
    pub top_k: Option<usize>,
    pub threshold: Option<f32>,
    pub token_budget: Option<usize>,
    pub explain: bool,
}

/// Why a hit scored what it did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    #[serde(flatten)]
    pub signals: SignalScores,
    /// Recency decay factor applied.
    pub decay: f32,
    pub kind_weight: f32,
    /// The memory's feedback factor (1 unless a user rated it negative).
    pub feedback: f32,
    /// `fused × decay × kind_weight × feedback`.
    pub score: f32,
    pub vector_path: VectorPath,
}

#[derive(Debug, Clone)]
pub struct SearchHit {
    pub memory: Memory,
    pub score: f32,
    pub explanation: Option<Explanation>,
}

#[derive(Debug, Clone)]
pub struct SearchOutput {
    pub hits: Vec<SearchHit>,
    pub vector_path: VectorPath,
    /// Tokens of the returned hits.
    pub tokens: usize,
    /// Whether the query embedding came from the cache.
    pub cached_embedding: bool,
}

/// Input of [`MemoryService::update`]. `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UpdateInput {
    pub text: Option<String>,
    pub metadata: Option<Metadata>,
    pub categories: Option<Vec<String>>,
    pub expires_at: Option<Option<Timestamp>>,
}

/// A page of a listing.
#[derive(Debug, Clone)]
pub struct Page {
    pub memories: Vec<Memory>,
    pub next: Option<Cursor>,
}

/// Longest search query accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 4096;

/// Longest speaker name accepted in a message.
pub const MAX_NAME_BYTES: usize = 128;

/// Largest page of a listing.
pub const MAX_PAGE: usize = 1000;
/// The deepest a page-numbered listing reaches (`page × page_size`); a
/// cursor listing goes on from anywhere at the cost of one page.
pub const MAX_PAGE_OFFSET: usize = 10_000;
/// A listing's page when the caller names no size.
pub const DEFAULT_PAGE: usize = 100;
/// A listing's page for an agent (MCP tools), whose context every memory
/// costs, when it names no size.
pub const DEFAULT_AGENT_PAGE: usize = 20;

/// What one [`MemoryService::sweep`] removed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SweepReport {
    pub memories: u64,
    pub versions: u64,
    pub history_events: u64,
    /// Transactions (of up to `sweep_batch` memories each).
    pub batches: u64,
    pub seconds: f64,
}
