//! Export (page by page, every version with its vector) and import
//! (idempotent by memory id).

use std::collections::HashMap;

use crate::access::Role;
use crate::ctx::RequestCtx;
use crate::filter::Filter;
use crate::memory::{MemoryId, Scope, text_hash};
use crate::portable::{ExportHeader, ExportedMemory, ExportedVersion, ImportReport};
use crate::ports::{AuditEvent, Cursor, WriteOp};
use crate::service::MemoryService;
use crate::{Error, ErrorCode, Result};

impl MemoryService {
    /// One page of an export: the live memories matching `filter` inside
    /// the caller's binding (newest first, after `after`), each with every
    /// version and vector and its history; and the cursor of the next page.
    pub async fn export_page(
        &self,
        ctx: &RequestCtx,
        filter: &Filter,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<(Vec<ExportedMemory>, Option<Cursor>)> {
        let page = self.list(ctx, filter, after, limit).await?;
        let ids: Vec<MemoryId> = page.memories.iter().map(|m| m.id).collect();
        let mut versions: HashMap<MemoryId, Vec<ExportedVersion>> = HashMap::new();
        for (memory, embedding) in self.inner.store.memory_versions(&ids).await? {
            versions
                .entry(memory.id)
                .or_default()
                .push(ExportedVersion { memory, embedding });
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(versions) = versions.remove(&id) else {
                continue; // erased or swept since the listing
            };
            out.push(ExportedMemory {
                id,
                versions,
                history: self.inner.store.history(id).await?,
            });
        }
        Ok((out, page.next))
    }

    /// Imports memories read from an export made with `header`: each is
    /// checked whole, must lie inside the caller's binding, and is written
    /// with all its versions and history unless the store already holds its
    /// id (so importing the same file again changes nothing). Vectors from
    /// another model are recomputed with this one. One transaction, one
    /// `memory.import` audit event.
    pub async fn import(
        &self,
        ctx: &RequestCtx,
        header: &ExportHeader,
        mut memories: Vec<ExportedMemory>,
    ) -> Result<ImportReport> {
        ctx.principal
            .require(Role::ReadWrite, "importing memories")?;
        let embedder = self.embedder();
        let model = embedder.model().clone();
        let same_model = header.embedding_model == model;
        let dim = header.embedding_model.dim;
        for m in &memories {
            m.validate(dim)?;
            let scope = &m.versions[0].memory.scope;
            if !ctx.principal.covers(scope) {
                return Err(Error::new(
                    ErrorCode::Forbidden,
                    format!("memory {} lies outside this key's binding", m.id),
                ));
            }
            for v in &m.versions {
                self.check_text(&v.memory.text, &format!("memory {}'s text", m.id))?;
            }
            // A sliding expiry must respect this scope's bounds, as on an add.
            if let Some(ttl) = m.current().and_then(|c| c.idle_ttl) {
                self.inner
                    .lifecycle
                    .policy(scope)
                    .idle_ttl(scope, Some(ttl))
                    .map_err(|e| Error::invalid(format!("memory {}: {}", m.id, e.message)))?;
            }
        }
        // What the store derives itself is recomputed, not trusted.
        for v in memories.iter_mut().flat_map(|m| m.versions.iter_mut()) {
            v.memory.hash = text_hash(&v.memory.text);
            v.memory.tokens = embedder.count_tokens(&v.memory.text) as u32;
        }
        // A kept vector is the file's: make it unit length, as the model's
        // are (a huge-norm vector would outrank every memory of its scope).
        for v in memories.iter_mut().flat_map(|m| m.versions.iter_mut()) {
            normalise(&mut v.embedding);
        }
        let existing = self.scopes_of(&memories).await?;
        // An id held under another scope is not "already imported", and the
        // answer must not tell that it exists: the memory is imported under
        // an id derived from it and its scope (the same on every import of
        // the file, so importing again still changes nothing).
        let mut renamed = false;
        for m in &mut memories {
            let scope = m.versions[0].memory.scope.clone();
            if existing.get(&m.id).is_some_and(|s| *s != scope) {
                m.rename(scoped_id(m.id, &scope), |h| scoped_id(h, &scope));
                renamed = true;
            }
        }
        let existing = if renamed {
            self.scopes_of(&memories).await?
        } else {
            existing
        };
        let mut report = ImportReport::default();
        let mut fresh: Vec<ExportedMemory> = Vec::with_capacity(memories.len());
        let mut seen = std::collections::HashSet::new();
        for m in memories {
            if existing.contains_key(&m.id) || !seen.insert(m.id) {
                report.skipped += 1;
            } else {
                fresh.push(m);
            }
        }
        // A version keeps its vector only when both the file and the version
        // itself name our model (an export taken across a re-embedding
        // switch may hold both models' vectors).
        let stale = |v: &ExportedVersion| !same_model || v.memory.embedding_model != model.id;
        let texts: Vec<String> = fresh
            .iter()
            .flat_map(|m| m.versions.iter().filter(|v| stale(v)))
            .map(|v| v.memory.text.clone())
            .collect();
        if !texts.is_empty() {
            let mut vectors = Self::embed_with(&*embedder, &texts).await?.into_iter();
            for v in fresh.iter_mut().flat_map(|m| m.versions.iter_mut()) {
                if stale(v) {
                    v.embedding = vectors.next().unwrap_or_default();
                    v.memory.embedding_model = model.id.clone();
                    report.reembedded += 1;
                }
            }
        }
        report.imported = fresh.len() as u64;
        if fresh.is_empty() {
            return Ok(report);
        }
        let mut ops: Vec<WriteOp> = fresh
            .into_iter()
            .map(|m| WriteOp::Import {
                versions: m
                    .versions
                    .into_iter()
                    .map(|v| (v.memory, v.embedding))
                    .collect(),
                history: m.history,
            })
            .collect();
        let mut audit = AuditEvent::new(
            self.now(),
            ctx.actor(),
            "memory.import",
            ctx.principal.binding.org_id.clone(),
            None,
            ctx.request_id.clone(),
        );
        audit.detail = serde_json::to_value(&report).unwrap_or_default();
        ops.push(WriteOp::Audit(audit));
        self.inner.store.apply(ops).await?;
        Ok(report)
    }
}

impl MemoryService {
    /// The scope of each of `memories`' ids the store already holds.
    async fn scopes_of(&self, memories: &[ExportedMemory]) -> Result<HashMap<MemoryId, Scope>> {
        let ids: Vec<MemoryId> = memories.iter().map(|m| m.id).collect();
        Ok(self
            .inner
            .store
            .memory_versions(&ids)
            .await?
            .into_iter()
            .map(|(m, _)| (m.id, m.scope))
            .collect())
    }
}

/// Scales `v` to unit length (a zero vector is refused before this).
fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 && (norm - 1.0).abs() > 1e-6 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// The id a memory is imported under when its own id is taken in another
/// scope: derived from both, so every import of the same file agrees.
fn scoped_id(id: MemoryId, scope: &Scope) -> MemoryId {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(id.as_bytes());
    for (f, v) in scope.iter() {
        h.update(f.as_str().as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}
