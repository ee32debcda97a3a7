//! Procedural memory: an agent's one memory of instructions and
//! preferences, merged into a new version on each procedural add.

use uuid::Uuid;

use crate::ctx::RequestCtx;
use crate::filter::Filter;
use crate::memory::{Event, Memory, MemoryKind, Scope, text_hash};
use crate::ports::WriteOp;
use crate::service::{AddInput, AddResult, MemoryService};
use crate::text;
use crate::{Error, Result};

impl MemoryService {
    /// The agent's one procedural memory (its instructions and preferences), if any.
    pub async fn procedural_memory(
        &self,
        ctx: &RequestCtx,
        scope: &Scope,
    ) -> Result<Option<Memory>> {
        let filter = Filter::exact_scope(scope).and(Filter::Cond(crate::filter::Cond::Kind(
            vec![MemoryKind::Procedural],
            false,
        )));
        Ok(self
            .list(ctx, &filter, None, 1)
            .await?
            .memories
            .into_iter()
            .next())
    }

    /// A procedural add for an agent: merged into the agent's one procedural
    /// memory (a new version), or its first version. `summary` is the merged
    /// text when an LLM wrote it; without one, new instructions are appended
    /// as lines (exact repeats skipped).
    pub async fn prepare_procedural(
        &self,
        ctx: &RequestCtx,
        mut input: AddInput,
        summary: Option<String>,
    ) -> Result<(Vec<WriteOp>, AddResult)> {
        input.scope = ctx.principal.bind_scope(input.scope)?;
        if input.scope.agent_id.is_none() {
            return Err(Error::invalid(
                "a procedural memory belongs to an agent: give `agent_id`",
            ));
        }
        let now = self.now();
        let pieces = self.pieces(&input, now)?;
        let (expires_at, idle_ttl) = self.expiry_of(&input, now)?;
        let existing = self.procedural_memory(ctx, &input.scope).await?;
        let text = match summary {
            Some(s) => s.trim().to_owned(),
            None => {
                let mut lines: Vec<String> = existing
                    .as_ref()
                    .map(|m| m.text.lines().map(str::to_owned).collect())
                    .unwrap_or_default();
                for (_, p) in pieces {
                    let p = p.trim().to_owned();
                    if !p.is_empty() && !lines.iter().any(|l| l.eq_ignore_ascii_case(&p)) {
                        lines.push(p);
                    }
                }
                lines.join("\n")
            }
        };
        self.check_text(&text, "the agent's procedural memory")?;
        if let Some(m) = &existing
            && m.text == text
        {
            let r = AddResult {
                id: m.id,
                memory: text,
                event: Event::Noop,
            };
            return Ok((Vec::new(), r));
        }
        let embedder = self.embedder();
        let vector = Self::embed_with(&*embedder, std::slice::from_ref(&text))
            .await?
            .pop()
            .ok_or_else(|| Error::embedder("embedder returned no vector"))?;
        let model = embedder.model().id.clone();
        let tokens = embedder.count_tokens(&text) as u32;
        Ok(match existing {
            Some(old) => {
                let mut next = self.successor(&old, &text, now);
                next.embedding_model = model.clone();
                let mut h = self.history_event(
                    ctx,
                    &next,
                    Event::Update,
                    Some(old.text.clone()),
                    Some(text.clone()),
                    now,
                );
                h.reason = Some("procedural memory updated with new instructions".into());
                let r = AddResult {
                    id: old.id,
                    memory: text,
                    event: Event::Update,
                };
                (
                    vec![WriteOp::Update {
                        memory: next,
                        embedding: Some(vector),
                        history: h,
                    }],
                    r,
                )
            }
            None => {
                let memory = Memory {
                    id: Uuid::now_v7(),
                    version: 1,
                    hash: text_hash(&text),
                    entities: text::tag_entities(&text),
                    tokens,
                    feedback: None,
                    text: text.clone(),
                    kind: MemoryKind::Procedural,
                    scope: input.scope.clone(),
                    metadata: input.metadata.clone(),
                    categories: input.categories.clone(),
                    role: None,
                    created_at: now,
                    updated_at: now,
                    valid_at: None,
                    invalid_at: None,
                    expires_at,
                    idle_ttl,
                    embedding_model: model,
                };
                let h = self.history_event(ctx, &memory, Event::Add, None, Some(text.clone()), now);
                let r = AddResult {
                    id: memory.id,
                    memory: text,
                    event: Event::Add,
                };
                (
                    vec![WriteOp::Insert {
                        memory,
                        embedding: vector,
                        history: h,
                    }],
                    r,
                )
            }
        })
    }
}
