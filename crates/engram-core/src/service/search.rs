//! Hybrid retrieval (now and `as_of` a time): signals over the
//! scope-filtered set, fused, weighed by decay and kind, thresholded and
//! packed into a token budget.

use jiff::Timestamp;

use super::{dot, require_scope};
use crate::budget;
use crate::ctx::RequestCtx;
use crate::fusion::{self, Ranked, SignalScores};
use crate::memory::{Entity, Feedback, Memory, MemoryId};
use crate::ports::VectorPath;
use crate::service::{
    Explanation, MAX_QUERY_BYTES, MemoryService, SearchHit, SearchInput, SearchOutput,
};
use crate::telemetry;
use crate::text;
use crate::{Error, ErrorCode, Result};

impl MemoryService {
    /// Hybrid retrieval: semantic, keyword and entity signals over the
    /// scope-filtered set, fused, × recency decay × kind weight, thresholded
    /// and packed into a token budget.
    pub async fn search(&self, ctx: &RequestCtx, mut input: SearchInput) -> Result<SearchOutput> {
        let cfg = &self.inner.retrieval;
        input.filter = ctx.principal.bind_filter(input.filter)?;
        require_scope(&input.filter)?;
        let (query, top_k) = self.check_search(&input)?;
        let query = query.as_str();
        let budget = input.token_budget.unwrap_or(cfg.default_token_budget);

        let started = std::time::Instant::now();
        let vis = self.vis();
        let candidates = cfg.candidates.max(top_k);
        let (vector, cached) = self.embed_query(query).await?;
        let embedded = started.elapsed();
        let w = cfg.weights;
        let terms = if w.keyword > 0.0 {
            text::keyword_terms(query)
        } else {
            Vec::new()
        };
        let keys: Vec<String> = if w.entity > 0.0 {
            let mut keys: Vec<String> = text::tag_entities(query).iter().map(Entity::key).collect();
            keys.dedup();
            keys
        } else {
            Vec::new()
        };
        let store = &self.inner.store;
        let filter = &input.filter;
        let (semantic, keyword, entity) = futures::join!(
            async {
                if w.semantic > 0.0 || (w.keyword == 0.0 && w.entity == 0.0) {
                    store
                        .vector_search(filter, vis, &vector, candidates)
                        .await
                        .map(Some)
                } else {
                    Ok(None)
                }
            },
            async {
                if terms.is_empty() {
                    Ok(Vec::new())
                } else {
                    store.keyword_search(filter, vis, &terms, candidates).await
                }
            },
            async {
                if keys.is_empty() {
                    Ok(Vec::new())
                } else {
                    store.entity_search(filter, vis, &keys, candidates).await
                }
            },
        );
        let (semantic, path): (Ranked<MemoryId>, VectorPath) = match semantic? {
            Some(v) => (v.hits, v.path),
            None => (Vec::new(), VectorPath::Empty),
        };
        let (keyword, entity) = (keyword?, entity?);
        // Candidates that only keyword or entity search found still get their
        // real cosine similarity, so fusion compares like with like. (Filling in
        // BM25 for semantic-only candidates was measured too: no gain, one more query.)
        let mut semantic = semantic;
        if w.semantic > 0.0 {
            let known: std::collections::HashSet<MemoryId> =
                semantic.iter().map(|(id, _)| *id).collect();
            let mut missing: Vec<MemoryId> = keyword
                .iter()
                .chain(&entity)
                .map(|(id, _)| *id)
                .filter(|id| !known.contains(id))
                .collect();
            missing.sort_unstable();
            missing.dedup();
            if !missing.is_empty() {
                semantic.extend(store.vector_scores(&missing, &vector).await?);
                semantic.sort_by(|a, b| b.1.total_cmp(&a.1));
            }
        }
        let mut fused = fusion::fuse(&semantic, &keyword, &entity, cfg);
        if cfg.context_weight > 0.0 {
            // The best candidates lend their score to the turns said around them.
            let mut best: Vec<(MemoryId, f32)> =
                fused.iter().map(|(id, s)| (*id, s.fused)).collect();
            best.sort_by(|a, b| b.1.total_cmp(&a.1));
            let top: Vec<MemoryId> = best.iter().take(top_k.max(20)).map(|(id, _)| *id).collect();
            let neighbors = store
                .neighbors(&top, filter, cfg.context_window_secs * 1000, vis)
                .await?;
            fusion::add_context(&mut fused, &neighbors, cfg.context_weight);
        }
        let ids: Vec<MemoryId> = fused.keys().copied().collect();
        // Re-check the filter on what is returned: a memory may have changed since a signal saw it.
        let memories: Vec<Memory> = store
            .get_many(&ids, vis)
            .await?
            .into_iter()
            .filter(|m| input.filter.matches(m))
            .collect();

        let words = text::query_words(query);
        let scored = memories
            .into_iter()
            .filter_map(|m| {
                let mut signals = *fused.get(&m.id)?;
                self.speaker_signal(&words, &m, &mut signals);
                Some(self.weigh(m, signals, vis.now))
            })
            .collect();
        let (mut hits, used) = self.rank(scored, &input, top_k, budget, path);
        telemetry::search(path, started.elapsed(), embedded, cached, hits.len(), used);
        self.touch(hits.iter_mut().map(|h| &mut h.memory)).await;
        Ok(SearchOutput {
            hits,
            vector_path: path,
            tokens: used,
            cached_embedding: cached,
        })
    }

    /// The speaker signal (when on): a memory said by someone the query
    /// names gains `speaker_weight` of a full score.
    pub(super) fn speaker_signal(
        &self,
        words: &std::collections::HashSet<String>,
        m: &Memory,
        signals: &mut SignalScores,
    ) {
        let cfg = &self.inner.retrieval;
        if cfg.speaker_weight > 0.0 || cfg.speaker_factor > 1.0 {
            let named = text::speaker(&m.text).is_some_and(|s| text::names_speaker(words, s));
            fusion::add_speaker(signals, named, cfg.speaker_weight);
            fusion::scale_speaker(signals, named, cfg.speaker_factor);
        }
        if cfg.question_factor != 1.0 && m.text.trim_end().ends_with('?') {
            signals.fused *= cfg.question_factor;
        }
    }

    /// A candidate's final score: its fused signals × recency decay (age
    /// relative to `now`) × its kind's weight × its feedback factor.
    pub(super) fn weigh(&self, memory: Memory, signals: SignalScores, now: Timestamp) -> Scored {
        let cfg = &self.inner.retrieval;
        let age_days = now.duration_since(memory.updated_at).as_secs_f64() / 86_400.0;
        let decay = fusion::decay(
            age_days,
            cfg.half_life_days.get(memory.kind),
            cfg.decay_floor,
        ) as f32;
        let kind_weight = cfg.kind_weights.get(memory.kind);
        let feedback = match memory.feedback {
            Some(Feedback::Negative | Feedback::VeryNegative) => cfg.negative_feedback_factor,
            Some(Feedback::Positive) | None => 1.0,
        };
        Scored {
            score: signals.fused * decay * kind_weight * feedback,
            memory,
            signals,
            decay,
            kind_weight,
            feedback,
        }
    }

    /// Thresholds, orders (highest score first; ties broken by newer, then id,
    /// so results are deterministic), keeps `top_k` and packs the token budget.
    /// Returns the hits and the tokens they use.
    pub(super) fn rank(
        &self,
        mut scored: Vec<Scored>,
        input: &SearchInput,
        top_k: usize,
        budget: usize,
        path: VectorPath,
    ) -> (Vec<SearchHit>, usize) {
        let exclude = self.inner.retrieval.exclude_very_negative;
        scored.retain(|c| {
            input.threshold.is_none_or(|t| c.score >= t)
                && !(exclude && c.memory.feedback == Some(Feedback::VeryNegative))
        });
        scored.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| b.memory.updated_at.cmp(&a.memory.updated_at))
                .then_with(|| a.memory.id.cmp(&b.memory.id))
        });
        scored.truncate(top_k);
        let tokens: Vec<usize> = scored.iter().map(|c| c.memory.tokens as usize).collect();
        let (kept, used) = budget::pack(&tokens, budget);
        let mut scored: Vec<Option<Scored>> = scored.into_iter().map(Some).collect();
        let hits = kept
            .into_iter()
            .filter_map(|i| scored[i].take())
            .map(|c| SearchHit {
                explanation: input.explain.then_some(Explanation {
                    signals: c.signals,
                    decay: c.decay,
                    kind_weight: c.kind_weight,
                    feedback: c.feedback,
                    score: c.score,
                    vector_path: path,
                }),
                memory: c.memory,
                score: c.score,
            })
            .collect();
        (hits, used)
    }

    /// The checks every search makes: the trimmed query and `top_k`.
    pub(super) fn check_search(&self, input: &SearchInput) -> Result<(String, usize)> {
        let cfg = &self.inner.retrieval;
        let query = input.query.trim();
        if query.is_empty() {
            return Err(Error::invalid("`query` must not be empty"));
        }
        if query.len() > MAX_QUERY_BYTES {
            return Err(Error::new(
                ErrorCode::LimitExceeded,
                format!(
                    "`query` is {} bytes long; the maximum is {MAX_QUERY_BYTES}",
                    query.len()
                ),
            ));
        }
        let top_k = input.top_k.unwrap_or(cfg.default_top_k);
        if top_k == 0 || top_k > cfg.max_top_k {
            return Err(Error::new(
                ErrorCode::LimitExceeded,
                format!("`top_k` must be between 1 and {}", cfg.max_top_k),
            ));
        }
        if let Some(t) = input.threshold
            && !(0.0..=1.0).contains(&t)
        {
            return Err(Error::invalid("`threshold` must be between 0 and 1"));
        }
        Ok((query.to_owned(), top_k))
    }

    /// A search as the memory stood at `at` (`as_of`): over the versions that
    /// were current then, scored by exact cosine similarity and keyword
    /// overlap (the indexes hold current versions only), decayed relative to
    /// `at`, thresholded and packed like a normal search.
    pub async fn search_as_of(
        &self,
        ctx: &RequestCtx,
        mut input: SearchInput,
        at: Timestamp,
    ) -> Result<SearchOutput> {
        let cfg = &self.inner.retrieval;
        input.filter = ctx.principal.bind_filter(input.filter)?;
        require_scope(&input.filter)?;
        let (query, top_k) = self.check_search(&input)?;
        let (vector, cached) = self.embed_query(&query).await?;
        let terms: Vec<String> = text::keyword_terms(&query);
        let words = text::query_words(&query);
        let max = cfg.max_as_of_versions;
        let versions = self
            .inner
            .store
            .versions_at(&input.filter, at, max.saturating_add(1))
            .await?;
        if versions.len() > max {
            return Err(Error::new(
                ErrorCode::LimitExceeded,
                format!(
                    "an `as_of` search scores at most {max} versions, and this scope held more then; \
                     narrow it (a user, agent or run id, or a filter)"
                ),
            ));
        }
        let w = cfg.weights;
        let scored = versions
            .into_iter()
            .map(|(m, v)| {
                let semantic = dot(&vector, &v).max(0.0);
                let lower = m.text.to_lowercase();
                let keyword = if terms.is_empty() {
                    0.0
                } else {
                    terms.iter().filter(|t| lower.contains(t.as_str())).count() as f32
                        / terms.len() as f32
                };
                let fused = (w.semantic * semantic + w.keyword * keyword)
                    / (w.semantic + w.keyword).max(f32::EPSILON);
                let mut signals = SignalScores {
                    semantic: Some(semantic),
                    keyword: Some(keyword),
                    fused,
                    ..Default::default()
                };
                self.speaker_signal(&words, &m, &mut signals);
                self.weigh(m, signals, at)
            })
            .collect();
        let budget = input.token_budget.unwrap_or(cfg.default_token_budget);
        let (hits, used) = self.rank(scored, &input, top_k, budget, VectorPath::Exact);
        Ok(SearchOutput {
            hits,
            vector_path: VectorPath::Exact,
            tokens: used,
            cached_embedding: cached,
        })
    }
}

/// A search candidate on its way to becoming a hit.
pub(super) struct Scored {
    memory: Memory,
    score: f32,
    signals: SignalScores,
    decay: f32,
    kind_weight: f32,
    feedback: f32,
}
