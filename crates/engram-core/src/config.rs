//! Tunables of ingest and retrieval. Passed explicitly; never global.

use serde::{Deserialize, Serialize};

use crate::memory::MemoryKind;

/// How per-signal scores are combined.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FusionMethod {
    /// Weighted sum of min-max normalised scores.
    Weighted,
    /// Reciprocal-rank fusion: Σ w / (k + rank).
    Rrf,
}

/// How semantic and keyword scores are put on a common [0, 1] scale before weighting.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Normalization {
    /// `(s - min) / (max - min)` over the candidates.
    MinMax,
    /// `s / max` over the candidates (keeps the gap to zero).
    Max,
    /// Absolute scales that keep a weak best match weak: cosine mapped
    /// linearly from [`Calibration::semantic_low`]..`semantic_high` to 0..1,
    /// keyword scores saturating as `s / (s + keyword_half)`.
    Calibrated,
}

/// The fixed scales of [`Normalization::Calibrated`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Cosine similarity that counts as no evidence (0).
    pub semantic_low: f32,
    /// Cosine similarity that counts as full evidence (1).
    pub semantic_high: f32,
    /// Raw keyword score that counts as half the evidence.
    pub keyword_half: f32,
}

impl Default for Calibration {
    fn default() -> Self {
        Calibration {
            semantic_low: 0.1,
            semantic_high: 0.7,
            keyword_half: 6.0,
        }
    }
}

/// Weight of each retrieval signal.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SignalWeights {
    pub semantic: f32,
    pub keyword: f32,
    pub entity: f32,
}

impl Default for SignalWeights {
    /// Measured on the LoCoMo dev set (docs/eval.md): keyword and semantic
    /// evidence are worth about the same; entities add a little.
    fn default() -> Self {
        SignalWeights {
            semantic: 0.45,
            keyword: 0.45,
            entity: 0.1,
        }
    }
}

/// Retrieval settings (DESIGN.md §2.4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrievalConfig {
    pub fusion: FusionMethod,
    pub normalization: Normalization,
    pub weights: SignalWeights,
    /// Share of a neighbouring turn's score a memory inherits (0 turns the context signal off).
    pub context_weight: f32,
    /// Memories at most this many seconds apart in the same scope are each other's context.
    pub context_window_secs: i64,
    /// Share of the score added to a memory whose speaker the query names
    /// ("What did Caroline research?" → the turns Caroline said); 0 turns it off.
    pub speaker_weight: f32,
    /// How much more a memory whose speaker the query names counts, as a
    /// factor (1: off): other memories' scores are divided by it. Unlike
    /// `speaker_weight` it cannot lift an irrelevant turn of the named speaker.
    pub speaker_factor: f32,
    /// Factor on the score of a turn that only asks a question (its text
    /// ends with `?`): the answer, not the question, is what a search wants
    /// (1: no change).
    pub question_factor: f32,
    /// The scales of [`Normalization::Calibrated`].
    pub calibration: Calibration,
    /// `k` of reciprocal-rank fusion.
    pub rrf_k: f32,
    /// Candidates each signal contributes before fusion.
    pub candidates: usize,
    /// Recency half-life in days, per kind; 0 turns decay off for that kind.
    pub half_life_days: HalfLives,
    /// The lowest decay factor: old memories keep at least this share of their score.
    pub decay_floor: f64,
    pub kind_weights: KindWeights,
    /// `top_k` when a request gives none.
    pub default_top_k: usize,
    /// Largest `top_k` accepted.
    pub max_top_k: usize,
    /// Token budget when a request gives none; 0 means unlimited.
    pub default_token_budget: usize,
    /// Most versions an `as_of` search scores (it scans the scope as it
    /// stood); a larger scope is refused with a hint to narrow it.
    pub max_as_of_versions: usize,
    /// Factor on the score of a memory rated `NEGATIVE` (and `VERY_NEGATIVE`,
    /// when those are searched at all); 1 = feedback ignored.
    pub negative_feedback_factor: f32,
    /// Whether memories rated `VERY_NEGATIVE` are left out of search results.
    pub exclude_very_negative: bool,
}

impl Default for RetrievalConfig {
    fn default() -> Self {
        RetrievalConfig {
            fusion: FusionMethod::Weighted,
            normalization: Normalization::MinMax,
            weights: SignalWeights::default(),
            context_weight: 0.5,
            context_window_secs: 1800,
            speaker_weight: 0.0,
            speaker_factor: 1.3,
            question_factor: 0.9,
            calibration: Calibration::default(),
            rrf_k: 60.0,
            candidates: 100,
            half_life_days: HalfLives::all(365.0),
            decay_floor: 0.8,
            kind_weights: KindWeights::default(),
            default_top_k: 10,
            max_top_k: 100,
            default_token_budget: 200,
            max_as_of_versions: 20_000,
            negative_feedback_factor: 0.5,
            exclude_very_negative: true,
        }
    }
}

/// Recency half-life in days per memory kind.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HalfLives {
    pub semantic: f64,
    pub episodic: f64,
    pub procedural: f64,
}

impl HalfLives {
    /// The same half-life for every kind.
    pub const fn all(days: f64) -> HalfLives {
        HalfLives {
            semantic: days,
            episodic: days,
            procedural: days,
        }
    }

    pub fn get(&self, kind: MemoryKind) -> f64 {
        match kind {
            MemoryKind::Semantic => self.semantic,
            MemoryKind::Episodic => self.episodic,
            MemoryKind::Procedural => self.procedural,
        }
    }
}

/// Multiplier per memory kind.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KindWeights {
    pub semantic: f32,
    pub episodic: f32,
    pub procedural: f32,
}

impl Default for KindWeights {
    fn default() -> Self {
        KindWeights {
            semantic: 1.0,
            episodic: 1.0,
            procedural: 1.0,
        }
    }
}

impl KindWeights {
    pub fn get(&self, kind: MemoryKind) -> f32 {
        match kind {
            MemoryKind::Semantic => self.semantic,
            MemoryKind::Episodic => self.episodic,
            MemoryKind::Procedural => self.procedural,
        }
    }
}

/// No-LLM ingest settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestConfig {
    /// A new memory whose cosine similarity to an existing one in the same scope is at least this is a NOOP.
    pub dedup_threshold: f32,
    /// A new memory at least this similar to one in the same scope that
    /// restates it with only a number, date, name or negation changed
    /// supersedes it (a new version) — no LLM needed (`correction.rs`).
    pub correction_threshold: f32,
    /// Turns longer than this many tokens are split into sentence chunks.
    pub max_chunk_tokens: usize,
    /// Longest memory text accepted, in bytes.
    pub max_text_bytes: usize,
    /// Most messages accepted in one add.
    pub max_messages: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            dedup_threshold: 0.95,
            correction_threshold: 0.8,
            max_chunk_tokens: 128,
            max_text_bytes: 16 * 1024,
            max_messages: 100,
        }
    }
}
