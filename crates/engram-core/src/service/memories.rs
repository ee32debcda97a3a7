//! Reads and edits of single memories and scopes: get, list, update,
//! revert, delete, history; and how a new version follows an old one.

use jiff::Timestamp;

use super::lifecycle::slide;
use super::{not_found, require_scope};
use crate::access::Role;
use crate::clock::to_millis;
use crate::ctx::RequestCtx;
use crate::filter::Filter;
use crate::memory::{Event, Feedback, HistoryEvent, Memory, MemoryId, text_hash};
use crate::ports::{Cursor, WriteOp};
use crate::service::{MAX_PAGE, MAX_PAGE_OFFSET, MemoryService, Page, UpdateInput};
use crate::telemetry;
use crate::text;
use crate::{Error, ErrorCode, Result};

impl MemoryService {
    /// The current version of a memory, if it lies inside the caller's binding.
    pub async fn get(&self, ctx: &RequestCtx, id: MemoryId) -> Result<Memory> {
        let mut m = self
            .inner
            .store
            .get(id, self.vis())
            .await?
            .filter(|m| ctx.principal.covers(&m.scope))
            .ok_or_else(|| not_found(id))?;
        self.touch(std::slice::from_mut(&mut m)).await;
        Ok(m)
    }

    /// Memories matching `filter` (which must name a scope id) inside the
    /// caller's binding, newest first.
    /// How many visible memories match `filter` inside the caller's binding.
    pub async fn count(&self, ctx: &RequestCtx, filter: &Filter) -> Result<usize> {
        let filter = &ctx.principal.bind_filter(filter.clone())?;
        require_scope(filter)?;
        self.inner.store.count(filter, self.vis()).await
    }

    pub async fn list(
        &self,
        ctx: &RequestCtx,
        filter: &Filter,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Page> {
        let filter = &ctx.principal.bind_filter(filter.clone())?;
        require_scope(filter)?;
        if limit == 0 || limit > MAX_PAGE {
            return Err(Error::new(
                ErrorCode::LimitExceeded,
                format!("`limit` must be between 1 and {MAX_PAGE}"),
            ));
        }
        let mut memories = self
            .inner
            .store
            .list(filter, self.vis(), after, limit + 1)
            .await?;
        let next = if memories.len() > limit {
            memories.truncate(limit);
            memories.last().map(Cursor::of)
        } else {
            None
        };
        Ok(Page { memories, next })
    }

    /// Page `page` (from 1) of `page_size` memories matching `filter` inside the
    /// caller's binding, newest first, and how many match in all (Mem0's
    /// page-numbered listing; the native API pages by cursor).
    pub async fn list_page(
        &self,
        ctx: &RequestCtx,
        filter: &Filter,
        page: usize,
        page_size: usize,
    ) -> Result<(usize, Vec<Memory>)> {
        let filter = ctx.principal.bind_filter(filter.clone())?;
        require_scope(&filter)?;
        if page == 0 {
            return Err(Error::invalid("`page` starts at 1"));
        }
        if page_size == 0 || page_size > MAX_PAGE {
            return Err(Error::new(
                ErrorCode::LimitExceeded,
                format!("`page_size` must be between 1 and {MAX_PAGE}"),
            ));
        }
        // A page number costs every row before it: they are bounded.
        let end = page
            .checked_mul(page_size)
            .filter(|end| *end <= MAX_PAGE_OFFSET)
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::LimitExceeded,
                    format!(
                        "pages reach at most memory {MAX_PAGE_OFFSET} (page × page_size); \
                         list further with a cursor (GET /v1/memories?cursor=…)"
                    ),
                )
            })?;
        let vis = self.vis();
        let total = self.inner.store.count(&filter, vis).await?;
        let end = end.min(total);
        let start = (page - 1) * page_size;
        if start >= end {
            return Ok((total, Vec::new()));
        }
        let mut memories = self.inner.store.list(&filter, vis, None, end).await?;
        let page = memories.split_off(start.min(memories.len()));
        Ok((total, page))
    }

    /// Writes a new version of a memory. Text changes re-embed and re-tag it.
    pub async fn update(
        &self,
        ctx: &RequestCtx,
        id: MemoryId,
        input: UpdateInput,
    ) -> Result<Memory> {
        ctx.principal
            .require(Role::ReadWrite, "updating memories")?;
        let Some((op, next)) = self.prepare_update(ctx, id, input).await? else {
            return self.get(ctx, id).await;
        };
        self.inner.store.apply(vec![op]).await?;
        telemetry::memory_event(Event::Update, 1);
        Ok(next)
    }

    /// Updates several memories in one transaction: all or none. An error
    /// names the memory it is about. At most [`MAX_BATCH_MEMORIES`] at once.
    pub async fn update_many(
        &self,
        ctx: &RequestCtx,
        updates: Vec<(MemoryId, UpdateInput)>,
    ) -> Result<usize> {
        ctx.principal
            .require(Role::ReadWrite, "updating memories")?;
        check_batch_len(updates.len())?;
        check_distinct(updates.iter().map(|(id, _)| *id))?;
        let mut ops = Vec::with_capacity(updates.len());
        for (id, input) in updates {
            let prepared = self
                .prepare_update(ctx, id, input)
                .await
                .map_err(|e| about(id, e))?;
            ops.extend(prepared.map(|(op, _)| op));
        }
        let n = ops.len();
        if n > 0 {
            self.inner.store.apply(ops).await?;
        }
        telemetry::memory_event(Event::Update, n as u64);
        Ok(n)
    }

    /// The write of an update, or `None` when it changes nothing.
    async fn prepare_update(
        &self,
        ctx: &RequestCtx,
        id: MemoryId,
        input: UpdateInput,
    ) -> Result<Option<(WriteOp, Memory)>> {
        if input.text.is_none()
            && input.metadata.is_none()
            && input.categories.is_none()
            && input.expires_at.is_none()
        {
            return Err(Error::invalid(
                "nothing to update: give `text`, `metadata`, `categories` or `expires_at`",
            ));
        }
        let current = self.get(ctx, id).await?;
        let now = self.now();
        let mut next = current.clone();
        if let Some(text) = &input.text {
            let text = text.trim();
            if text.is_empty() {
                return Err(Error::invalid("`text` must not be empty"));
            }
            self.check_text(text, "`text`")?;
            next.text = text.to_owned();
        }
        if let Some(m) = input.metadata {
            next.metadata = m;
        }
        if let Some(c) = input.categories {
            next.categories = c;
        }
        if let Some(e) = input.expires_at {
            if e.is_some_and(|e| e <= now) {
                return Err(Error::invalid("`expires_at` is in the past"));
            }
            next.expires_at = e.map(to_millis);
            next.idle_ttl = None;
        }
        if next == current {
            return Ok(None);
        }
        next.version = current.version + 1;
        next.updated_at = now.max(current.updated_at);
        slide(&mut next, now);
        let embedding = if next.text != current.text {
            self.retext(&mut next);
            let (vector, model) = self.embed_one(&next.text).await?;
            next.embedding_model = model;
            Some(vector)
        } else {
            // The store keeps the previous vector and labels it itself.
            None
        };
        let history = self.history_event(
            ctx,
            &next,
            Event::Update,
            Some(current.text.clone()),
            Some(next.text.clone()),
            now,
        );
        let op = WriteOp::Update {
            memory: next.clone(),
            embedding,
            history,
        };
        Ok(Some((op, next)))
    }

    /// Records a user's rating of a memory (Mem0's feedback) on its current
    /// version, in place — no new version — with a `FEEDBACK` history row
    /// (and audit event) carrying the rating and the reason. `None` clears
    /// it. A negative rating lowers the memory's rank; a very negative one
    /// keeps it out of search results (`RetrievalConfig`).
    pub async fn feedback(
        &self,
        ctx: &RequestCtx,
        id: MemoryId,
        feedback: Option<Feedback>,
        reason: Option<String>,
    ) -> Result<Memory> {
        ctx.principal.require(Role::ReadWrite, "rating memories")?;
        if reason
            .as_ref()
            .is_some_and(|r| r.len() > MAX_FEEDBACK_REASON)
        {
            return Err(Error::invalid(format!(
                "`feedback_reason` is longer than {MAX_FEEDBACK_REASON} bytes"
            )));
        }
        let mut current = self.get(ctx, id).await?;
        let now = self.now();
        let mut history = self.history_event(
            ctx,
            &current,
            Event::Feedback,
            Some(current.text.clone()),
            Some(current.text.clone()),
            now,
        );
        let rating = feedback.map_or("cleared", Feedback::as_str);
        history.reason = Some(match reason.as_deref().map(str::trim) {
            Some(r) if !r.is_empty() => format!("{rating}: {r}"),
            _ => rating.to_owned(),
        });
        self.inner
            .store
            .apply(vec![WriteOp::SetFeedback {
                id,
                version: current.version,
                feedback,
                history,
            }])
            .await?;
        telemetry::memory_event(Event::Feedback, 1);
        current.feedback = feedback;
        Ok(current)
    }

    /// Restores the text of an earlier `version` as a new version (recorded
    /// as a `REVERT` history event); every version stays in the history.
    pub async fn revert(&self, ctx: &RequestCtx, id: MemoryId, version: u32) -> Result<Memory> {
        ctx.principal
            .require(Role::ReadWrite, "reverting memories")?;
        let current = self.get(ctx, id).await?;
        let events = self.inner.store.history(id).await?;
        let text = events
            .iter()
            .filter(|e| {
                e.version == version
                    && matches!(e.event, Event::Add | Event::Update | Event::Revert)
            })
            .find_map(|e| e.new_text.clone())
            .ok_or_else(|| {
                Error::not_found(format!(
                    "memory {id} has no version {version} (it is at version {})",
                    current.version
                ))
            })?;
        if version == current.version {
            return Err(Error::invalid(format!(
                "version {version} is the current version of memory {id}"
            )));
        }
        let now = self.now();
        let mut next = self.successor(&current, &text, now);
        let (vector, model) = self.embed_one(&text).await?;
        next.embedding_model = model;
        let mut history = self.history_event(
            ctx,
            &next,
            Event::Revert,
            Some(current.text.clone()),
            Some(text),
            now,
        );
        history.reason = Some(format!("revert to version {version}"));
        self.inner
            .store
            .apply(vec![WriteOp::Update {
                memory: next.clone(),
                embedding: Some(vector),
                history,
            }])
            .await?;
        telemetry::memory_event(Event::Revert, 1);
        Ok(next)
    }

    /// Closes the current version of a memory; its history remains.
    pub async fn delete(&self, ctx: &RequestCtx, id: MemoryId) -> Result<()> {
        ctx.principal
            .require(Role::ReadWrite, "deleting memories")?;
        let op = self.prepare_delete(ctx, id).await?;
        self.inner.store.apply(vec![op]).await?;
        telemetry::memory_event(Event::Delete, 1);
        Ok(())
    }

    /// Deletes several memories in one transaction: all or none. An error
    /// names the memory it is about. At most [`MAX_BATCH_MEMORIES`] at once.
    pub async fn delete_many(&self, ctx: &RequestCtx, ids: Vec<MemoryId>) -> Result<usize> {
        ctx.principal
            .require(Role::ReadWrite, "deleting memories")?;
        check_batch_len(ids.len())?;
        check_distinct(ids.iter().copied())?;
        let mut ops = Vec::with_capacity(ids.len());
        for id in ids {
            ops.push(
                self.prepare_delete(ctx, id)
                    .await
                    .map_err(|e| about(id, e))?,
            );
        }
        let n = ops.len();
        self.inner.store.apply(ops).await?;
        telemetry::memory_event(Event::Delete, n as u64);
        Ok(n)
    }

    async fn prepare_delete(&self, ctx: &RequestCtx, id: MemoryId) -> Result<WriteOp> {
        let current = self.get(ctx, id).await?;
        let now = self.now();
        let history = self.history_event(
            ctx,
            &current,
            Event::Delete,
            Some(current.text.clone()),
            None,
            now,
        );
        Ok(WriteOp::Delete {
            id,
            at: now,
            history,
        })
    }

    /// Deletes every visible memory matching `filter` (which must name a scope id). Returns how many.
    pub async fn delete_all(&self, ctx: &RequestCtx, filter: &Filter) -> Result<usize> {
        ctx.principal
            .require(Role::ReadWrite, "deleting memories")?;
        let filter = ctx.principal.bind_filter(filter.clone())?;
        require_scope(&filter)?;
        self.delete_matching(ctx, &filter).await
    }

    /// Deletes every memory the caller can see (Mem0's `reset`). Admin only;
    /// an admin key resets its own binding (its org), the operator everything.
    pub async fn reset(&self, ctx: &RequestCtx) -> Result<usize> {
        ctx.principal
            .require(Role::Admin, "resetting every memory")?;
        let filter = ctx.principal.bind_filter(Filter::all())?;
        self.delete_matching(ctx, &filter).await
    }

    /// Closes every visible memory matching an already-bound `filter`.
    pub(super) async fn delete_matching(&self, ctx: &RequestCtx, filter: &Filter) -> Result<usize> {
        let mut deleted = 0;
        loop {
            // Each round deletes what it listed, so the next listing starts over.
            let memories = self.inner.store.list(filter, self.vis(), None, 500).await?;
            if memories.is_empty() {
                return Ok(deleted);
            }
            let now = self.now();
            let ops: Vec<WriteOp> = memories
                .iter()
                .map(|m| WriteOp::Delete {
                    id: m.id,
                    at: now,
                    history: self.history_event(
                        ctx,
                        m,
                        Event::Delete,
                        Some(m.text.clone()),
                        None,
                        now,
                    ),
                })
                .collect();
            deleted += ops.len();
            let n = ops.len() as u64;
            self.inner.store.apply(ops).await?;
            telemetry::memory_event(Event::Delete, n);
        }
    }

    /// Every change of a memory, oldest first (also for deleted memories).
    pub async fn history(&self, ctx: &RequestCtx, id: MemoryId) -> Result<Vec<HistoryEvent>> {
        let events = self.inner.store.history(id).await?;
        // Every version of a memory keeps its scope, so the first event decides.
        match events.first() {
            Some(first) if ctx.principal.covers(&first.scope) => Ok(events),
            _ => Err(not_found(id)),
        }
    }

    /// Derives what follows from a memory's text: hash, entities, token count.
    pub(crate) fn retext(&self, m: &mut Memory) {
        m.hash = text_hash(&m.text);
        m.entities = text::tag_entities(&m.text);
        m.tokens = self.embedder().count_tokens(&m.text) as u32;
    }

    /// The next version of `current` with `text` (written at `now`).
    pub(crate) fn successor(&self, current: &Memory, text: &str, now: Timestamp) -> Memory {
        let mut next = current.clone();
        next.text = text.to_owned();
        // Labelled with the model embedding it now: a write prepared before
        // a re-embedding switch is refused after it (`store::check_model`).
        next.embedding_model = self.embedder().model().id.clone();
        self.retext(&mut next);
        next.version = current.version + 1;
        next.updated_at = now.max(current.updated_at);
        slide(&mut next, now);
        next
    }
}

/// Most memories one batch update or delete may name (Mem0's limit).
pub const MAX_BATCH_MEMORIES: usize = 1000;

fn check_batch_len(n: usize) -> Result<()> {
    if n == 0 || n > MAX_BATCH_MEMORIES {
        return Err(Error::new(
            ErrorCode::LimitExceeded,
            format!("a batch names between 1 and {MAX_BATCH_MEMORIES} memories, not {n}"),
        ));
    }
    Ok(())
}

fn check_distinct(ids: impl Iterator<Item = MemoryId>) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for id in ids {
        if !seen.insert(id) {
            return Err(Error::invalid(format!(
                "memory {id} appears twice in the batch"
            )));
        }
    }
    Ok(())
}

/// `e`, saying which memory stopped the batch (nothing of it was written).
fn about(id: MemoryId, e: Error) -> Error {
    let message = e.message.replace(&format!("memory {id} "), "it ");
    Error::new(
        e.code,
        format!("the batch stopped at memory {id} (nothing was written): {message}"),
    )
}

/// Longest reason a feedback may carry.
pub const MAX_FEEDBACK_REASON: usize = 1000;
