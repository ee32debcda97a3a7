//! The fixture every case takes, and the builders the cases share.

use std::any::Any;
use std::sync::Arc;

use engram_core::memory::{Event, HistoryEvent, Memory, MemoryId, MemoryKind, Scope, text_hash};
use engram_core::ports::{ModelInfo, Store, Visibility, WriteOp};
use jiff::{SignedDuration, Timestamp};

/// Dimension of the suite's vectors.
pub const DIM: usize = 8;

/// A store under test plus whatever keeps it alive (a temp dir, a server).
pub struct Fixture {
    pub store: Arc<dyn Store>,
    pub guard: Box<dyn Any + Send>,
}

/// The model every case binds.
pub fn model() -> ModelInfo {
    ModelInfo {
        id: "suite-model@1".into(),
        dim: DIM,
    }
}

pub(crate) fn t0() -> Timestamp {
    Timestamp::from_second(1_750_000_000).unwrap_or(Timestamp::UNIX_EPOCH)
}

pub(crate) fn vis() -> Visibility {
    Visibility {
        now: t0() + SignedDuration::from_hours(1),
    }
}

/// A unit vector pointing mostly along `axis`, tilted by `tilt` towards the next axis.
pub fn vector(axis: usize, tilt: f32) -> Vec<f32> {
    let mut v = [0.0; DIM];
    v[axis % DIM] = 1.0;
    v[(axis + 1) % DIM] = tilt;
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

pub fn user(u: &str) -> Scope {
    Scope {
        user_id: Some(u.into()),
        ..Default::default()
    }
}

/// A memory with sensible defaults.
pub fn memory(text: &str, scope: Scope, at_secs: i64) -> Memory {
    let at = t0() + SignedDuration::from_secs(at_secs);
    Memory {
        id: uuid::Uuid::now_v7(),
        version: 1,
        text: text.into(),
        kind: MemoryKind::Semantic,
        hash: text_hash(text),
        scope,
        metadata: Default::default(),
        categories: Vec::new(),
        entities: engram_core::text::tag_entities(text),
        role: Some("user".into()),
        created_at: at,
        updated_at: at,
        valid_at: None,
        invalid_at: None,
        expires_at: None,
        idle_ttl: None,
        embedding_model: model().id,
        tokens: text.split_whitespace().count() as u32,
        feedback: None,
    }
}

pub(crate) fn history(
    m: &Memory,
    event: Event,
    old: Option<&str>,
    new: Option<&str>,
) -> HistoryEvent {
    HistoryEvent {
        id: uuid::Uuid::now_v7(),
        memory_id: m.id,
        event,
        old_text: old.map(Into::into),
        new_text: new.map(Into::into),
        version: m.version,
        actor: Some("suite".into()),
        reason: None,
        request_id: Some("req-1".into()),
        scope: m.scope.clone(),
        created_at: m.updated_at,
    }
}

/// The next version of `prev`: `text`, written at `at`.
pub(crate) fn revised(prev: &Memory, text: &str, at: Timestamp) -> Memory {
    let mut next = prev.clone();
    next.version = prev.version + 1;
    next.text = text.into();
    next.updated_at = at;
    next
}

/// The update writing `next` over `prev`, with its history row.
pub(crate) fn update(prev: &Memory, next: &Memory, embedding: Option<Vec<f32>>) -> WriteOp {
    WriteOp::Update {
        memory: next.clone(),
        embedding,
        history: history(next, Event::Update, Some(&prev.text), Some(&next.text)),
    }
}

pub fn insert(m: &Memory, v: Vec<f32>) -> WriteOp {
    WriteOp::Insert {
        memory: m.clone(),
        embedding: v,
        history: history(m, Event::Add, None, Some(&m.text)),
    }
}

pub(crate) async fn bound(f: &Fixture) {
    f.store.bind_model(&model()).await.expect("bind model");
}

pub(crate) fn ids(hits: &[(MemoryId, f32)]) -> Vec<MemoryId> {
    hits.iter().map(|(id, _)| *id).collect()
}
