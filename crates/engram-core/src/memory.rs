//! The memory record, its scope, and its history.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::{Error, Result};

/// A memory's logical id. All versions of a memory share it.
pub type MemoryId = Uuid;

/// JSON object attached to a memory by the caller.
pub type Metadata = Map<String, Value>;

/// What a memory is about (DESIGN.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MemoryKind {
    /// A fact about the world or the user ("Alice is vegetarian").
    #[default]
    Semantic,
    /// An event, with its date ("Alice moved to Lisbon in May 2024").
    Episodic,
    /// An instruction or preference for the agent ("answer in French").
    Procedural,
}

impl MemoryKind {
    pub const ALL: [MemoryKind; 3] = [
        MemoryKind::Semantic,
        MemoryKind::Episodic,
        MemoryKind::Procedural,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MemoryKind::Semantic => "semantic",
            MemoryKind::Episodic => "episodic",
            MemoryKind::Procedural => "procedural",
        }
    }
}

impl fmt::Display for MemoryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MemoryKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "semantic" => Ok(MemoryKind::Semantic),
            "episodic" => Ok(MemoryKind::Episodic),
            "procedural" => Ok(MemoryKind::Procedural),
            other => Err(Error::invalid(format!(
                "unknown memory kind `{other}`: expected one of semantic, episodic, procedural"
            ))),
        }
    }
}

/// The five scope ids a memory can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScopeField {
    Org,
    App,
    User,
    Agent,
    Run,
}

impl ScopeField {
    pub const ALL: [ScopeField; 5] = [
        ScopeField::Org,
        ScopeField::App,
        ScopeField::User,
        ScopeField::Agent,
        ScopeField::Run,
    ];

    /// The wire / column name, e.g. `user_id`.
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeField::Org => "org_id",
            ScopeField::App => "app_id",
            ScopeField::User => "user_id",
            ScopeField::Agent => "agent_id",
            ScopeField::Run => "run_id",
        }
    }

    pub fn from_name(name: &str) -> Option<ScopeField> {
        ScopeField::ALL.into_iter().find(|f| f.as_str() == name)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Which org / app / user / agent / run a memory belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Scope {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

/// Longest scope id accepted.
pub const MAX_SCOPE_ID_LEN: usize = 256;

impl Scope {
    pub fn get(&self, field: ScopeField) -> Option<&str> {
        match field {
            ScopeField::Org => self.org_id.as_deref(),
            ScopeField::App => self.app_id.as_deref(),
            ScopeField::User => self.user_id.as_deref(),
            ScopeField::Agent => self.agent_id.as_deref(),
            ScopeField::Run => self.run_id.as_deref(),
        }
    }

    pub fn set(&mut self, field: ScopeField, value: Option<String>) {
        let slot = match field {
            ScopeField::Org => &mut self.org_id,
            ScopeField::App => &mut self.app_id,
            ScopeField::User => &mut self.user_id,
            ScopeField::Agent => &mut self.agent_id,
            ScopeField::Run => &mut self.run_id,
        };
        *slot = value;
    }

    /// The ids that are set, in field order.
    pub fn iter(&self) -> impl Iterator<Item = (ScopeField, &str)> {
        ScopeField::ALL
            .into_iter()
            .filter_map(|f| self.get(f).map(|v| (f, v)))
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// Checks that at least one id is set and that every id is well formed.
    pub fn validate_for_write(&self) -> Result<()> {
        if self.is_empty() {
            return Err(Error::new(
                crate::ErrorCode::MissingScope,
                "name at least one scope id: user_id, agent_id, run_id, org_id or app_id",
            ));
        }
        for (field, value) in self.iter() {
            validate_scope_id(field, value)?;
        }
        Ok(())
    }
}

/// A scope id must be non-empty, at most [`MAX_SCOPE_ID_LEN`] bytes, without control characters, and not `*`.
pub fn validate_scope_id(field: ScopeField, value: &str) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::invalid(format!(
            "`{}` must not be empty",
            field.as_str()
        )));
    }
    if value.len() > MAX_SCOPE_ID_LEN {
        return Err(Error::invalid(format!(
            "`{}` is {} bytes long; the maximum is {MAX_SCOPE_ID_LEN}",
            field.as_str(),
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "`{}` must not contain control characters",
            field.as_str()
        )));
    }
    if value == "*" {
        return Err(Error::invalid(format!(
            "`{}` cannot be the wildcard `*` when writing",
            field.as_str()
        )));
    }
    Ok(())
}

/// A named thing a memory mentions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entity {
    /// The surface form, e.g. `Lisbon`.
    pub name: String,
    /// A coarse type: `name`, `quoted`, `number`, `date`, or whatever an extractor says.
    #[serde(rename = "type")]
    pub kind: String,
}

impl Entity {
    /// The key used by the entity index: lower-cased, whitespace collapsed.
    pub fn key(&self) -> String {
        entity_key(&self.name)
    }
}

/// Normalises an entity name for indexing and lookup.
pub fn entity_key(name: &str) -> String {
    name.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// One version of a memory.
///
/// A memory is a chain of versions sharing `id`; exactly one is current
/// (`invalid_at == None`) unless the memory was deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    pub id: MemoryId,
    /// 1 for the first version, +1 per update.
    pub version: u32,
    pub text: String,
    pub kind: MemoryKind,
    /// MD5 of the text, hex (the same value Mem0 reports).
    pub hash: String,
    pub scope: Scope,
    pub metadata: Metadata,
    pub categories: Vec<String>,
    pub entities: Vec<Entity>,
    /// Who said it, when the memory came from a message (`user`, `assistant`, a name).
    pub role: Option<String>,
    /// When the memory (its first version) was created.
    pub created_at: Timestamp,
    /// When this version was written.
    pub updated_at: Timestamp,
    /// When the fact became true in the world, if known.
    pub valid_at: Option<Timestamp>,
    /// When this version stopped being current (updated or deleted).
    pub invalid_at: Option<Timestamp>,
    /// When the memory expires and stops being visible.
    pub expires_at: Option<Timestamp>,
    /// A sliding expiry: each use of the memory (a write, or a read that
    /// returns it) moves `expires_at` to that time plus this. `None` when the
    /// expiry is fixed or there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ttl: Option<jiff::SignedDuration>,
    /// The embedding model this version's vector came from.
    pub embedding_model: String,
    /// Length in tokens of `text`, counted with the embedding model's tokenizer.
    pub tokens: u32,
    /// How a user rated the memory (Mem0's feedback); weighs its ranking.
    /// Set in place on the current version, kept by later versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<Feedback>,
}

/// A user's rating of a memory: a negative one ranks it lower, a very
/// negative one keeps it out of search results (by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Feedback {
    Positive,
    Negative,
    VeryNegative,
}

impl Feedback {
    pub fn as_str(self) -> &'static str {
        match self {
            Feedback::Positive => "POSITIVE",
            Feedback::Negative => "NEGATIVE",
            Feedback::VeryNegative => "VERY_NEGATIVE",
        }
    }

    /// `POSITIVE`, `NEGATIVE` or `VERY_NEGATIVE` (any case).
    pub fn parse(s: &str) -> crate::Result<Feedback> {
        match s.to_ascii_uppercase().as_str() {
            "POSITIVE" => Ok(Feedback::Positive),
            "NEGATIVE" => Ok(Feedback::Negative),
            "VERY_NEGATIVE" => Ok(Feedback::VeryNegative),
            _ => Err(crate::Error::invalid(format!(
                "unknown feedback `{s}`: use POSITIVE, NEGATIVE or VERY_NEGATIVE (or null to clear it)"
            ))),
        }
    }
}

impl Memory {
    /// Whether this version is the current one and not expired at `now`.
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.invalid_at.is_none() && self.expires_at.is_none_or(|e| e > now)
    }
}

/// What happened to a memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Event {
    Add,
    Update,
    Delete,
    Noop,
    /// A new version restoring an earlier version's text.
    Revert,
    /// A user rated the memory (no new version; `reason` says how and why).
    Feedback,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Add => "ADD",
            Event::Update => "UPDATE",
            Event::Delete => "DELETE",
            Event::Noop => "NOOP",
            Event::Revert => "REVERT",
            Event::Feedback => "FEEDBACK",
        }
    }

    pub fn parse(s: &str) -> Option<Event> {
        match s {
            "ADD" => Some(Event::Add),
            "UPDATE" => Some(Event::Update),
            "DELETE" => Some(Event::Delete),
            "NOOP" => Some(Event::Noop),
            "REVERT" => Some(Event::Revert),
            "FEEDBACK" => Some(Event::Feedback),
            _ => None,
        }
    }
}

/// One row of a memory's history: every change writes one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEvent {
    pub id: Uuid,
    pub memory_id: MemoryId,
    pub event: Event,
    pub old_text: Option<String>,
    pub new_text: Option<String>,
    /// The version this event produced (or closed, for DELETE).
    pub version: u32,
    /// Who caused it (an API key id, `cli`, `system`…).
    pub actor: Option<String>,
    pub reason: Option<String>,
    pub request_id: Option<String>,
    pub scope: Scope,
    pub created_at: Timestamp,
}

/// MD5 hex digest of a memory text (Mem0's `hash`).
pub fn text_hash(text: &str) -> String {
    use md5::{Digest, Md5};
    hex(&Md5::digest(text.as_bytes()))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(2 * bytes.len()), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Normalises an entity list for the index.
pub fn entity_keys(entities: &[Entity]) -> Vec<String> {
    let mut keys: Vec<String> = entities.iter().map(|e| entity_key(&e.name)).collect();
    keys.sort();
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_matches_reference() {
        assert_eq!(text_hash(""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(text_hash("hello"), "5d41402abc4b2a76b9719d911017c592");
    }

    #[test]
    fn scope_validation() {
        assert!(Scope::default().validate_for_write().is_err());
        let s = Scope {
            user_id: Some("alice".into()),
            ..Default::default()
        };
        assert!(s.validate_for_write().is_ok());
        let bad = Scope {
            user_id: Some(" ".into()),
            ..Default::default()
        };
        assert_eq!(
            bad.validate_for_write().unwrap_err().code,
            crate::ErrorCode::InvalidRequest
        );
        let star = Scope {
            agent_id: Some("*".into()),
            ..Default::default()
        };
        assert!(star.validate_for_write().is_err());
    }

    #[test]
    fn kind_round_trip() {
        for k in MemoryKind::ALL {
            assert_eq!(k.as_str().parse::<MemoryKind>().unwrap(), k);
        }
        assert!("fact".parse::<MemoryKind>().is_err());
    }
}
