//! Retrieval maths: score normalisation, signal fusion, recency decay.
//!
//! Each signal (semantic, keyword, entity) returns candidates with raw
//! scores. [`fuse`] turns them into one score per memory; the caller then
//! multiplies by [`decay`] and the kind weight.

use std::collections::HashMap;
use std::hash::Hash;

use serde::Serialize;

use crate::config::{FusionMethod, Normalization, RetrievalConfig};

/// A signal's candidates, best first, with raw scores.
pub type Ranked<K> = Vec<(K, f32)>;

/// What each signal said about one memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct SignalScores {
    /// Raw cosine similarity, if the memory was a semantic candidate.
    pub semantic: Option<f32>,
    /// Raw BM25 score, if a keyword candidate.
    pub keyword: Option<f32>,
    /// Raw entity-overlap score, if an entity candidate.
    pub entity: Option<f32>,
    /// The best fused score of a neighbouring turn, if the context signal is on.
    pub context: Option<f32>,
    /// 1 when the query names the memory's speaker, 0 when not (if the speaker signal is on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speaker: Option<f32>,
    /// The fused score before decay and kind weight, in [0, 1].
    pub fused: f32,
}

/// Min-max normalises scores to [0, 1]. A single candidate (or all equal) gets 1.
pub fn min_max(scores: &[f32]) -> Vec<f32> {
    let (lo, hi) = scores
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &s| {
            (lo.min(s), hi.max(s))
        });
    let span = hi - lo;
    scores
        .iter()
        .map(|&s| {
            if span > f32::EPSILON {
                (s - lo) / span
            } else {
                1.0
            }
        })
        .collect()
}

/// Scales scores by their maximum; non-positive maxima give zeros.
pub fn max_scale(scores: &[f32]) -> Vec<f32> {
    let hi = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    scores
        .iter()
        .map(|&s| {
            if hi > f32::EPSILON {
                (s / hi).max(0.0)
            } else {
                0.0
            }
        })
        .collect()
}

/// Fuses the three signals' candidate lists into one score per key.
pub fn fuse<K: Copy + Eq + Hash>(
    semantic: &Ranked<K>,
    keyword: &Ranked<K>,
    entity: &Ranked<K>,
    config: &RetrievalConfig,
) -> HashMap<K, SignalScores> {
    let mut out: HashMap<K, SignalScores> = HashMap::new();
    for (key, s) in semantic {
        out.entry(*key).or_default().semantic = Some(*s);
    }
    for (key, s) in keyword {
        out.entry(*key).or_default().keyword = Some(*s);
    }
    for (key, s) in entity {
        out.entry(*key).or_default().entity = Some(*s);
    }
    let w = config.weights;
    let total = (w.semantic + w.keyword + w.entity).max(f32::EPSILON);
    let lists = [
        (semantic, w.semantic),
        (keyword, w.keyword),
        (entity, w.entity),
    ];
    match config.fusion {
        FusionMethod::Weighted => {
            // Semantic and keyword scores are relative (cosine ranges differ per
            // query, BM25 is unbounded): min-max them over the candidates.
            // Entity scores are absolute in [0, 1] already: a common name must stay weak.
            for (i, (list, weight)) in lists.into_iter().enumerate() {
                let raw: Vec<f32> = list.iter().map(|(_, s)| *s).collect();
                let c = config.calibration;
                let norm = match (i, config.normalization) {
                    (2, _) => raw.iter().map(|s| s.clamp(0.0, 1.0)).collect(),
                    (_, Normalization::MinMax) => min_max(&raw),
                    (_, Normalization::Max) => max_scale(&raw),
                    (0, Normalization::Calibrated) => raw
                        .iter()
                        .map(|s| {
                            ((s - c.semantic_low) / (c.semantic_high - c.semantic_low).max(1e-6))
                                .clamp(0.0, 1.0)
                        })
                        .collect(),
                    (_, Normalization::Calibrated) => raw
                        .iter()
                        .map(|s| {
                            let s = s.max(0.0);
                            s / (s + c.keyword_half.max(1e-6))
                        })
                        .collect(),
                };
                for ((key, _), norm) in list.iter().zip(norm) {
                    if let Some(entry) = out.get_mut(key) {
                        entry.fused += weight * norm / total;
                    }
                }
            }
        }
        FusionMethod::Rrf => {
            // The best possible RRF score is Σw/(k+1); scale so it maps to 1.
            let best = 1.0 / (config.rrf_k + 1.0);
            for (list, weight) in lists {
                for (rank, (key, _)) in list.iter().enumerate() {
                    if let Some(entry) = out.get_mut(key) {
                        entry.fused += weight / (config.rrf_k + rank as f32 + 1.0) / best / total;
                    }
                }
            }
        }
    }
    out
}

/// Adds conversational context: each memory inherits `weight ×` the best fused
/// score among its neighbours (`neighbors` maps a scored memory to its
/// neighbours); memories found only as neighbours join the candidates.
/// Scores are divided by `1 + weight` to stay in [0, 1].
pub fn add_context<K: Copy + Eq + Hash>(
    scores: &mut HashMap<K, SignalScores>,
    neighbors: &[(K, Vec<K>)],
    weight: f32,
) {
    if weight <= 0.0 {
        return;
    }
    let mut inherited: HashMap<K, f32> = HashMap::new();
    for (key, near) in neighbors {
        let Some(own) = scores.get(key).map(|s| s.fused) else {
            continue;
        };
        for n in near {
            let best = inherited.entry(*n).or_insert(0.0);
            *best = best.max(own);
        }
    }
    for (key, s) in scores.iter_mut() {
        let ctx = inherited.get(key).copied().unwrap_or(0.0);
        s.context = Some(ctx);
        s.fused = (s.fused + weight * ctx) / (1.0 + weight);
    }
    for (key, ctx) in inherited {
        scores.entry(key).or_insert_with(|| SignalScores {
            context: Some(ctx),
            fused: weight * ctx / (1.0 + weight),
            ..Default::default()
        });
    }
}

/// Adds the speaker signal: a memory whose speaker the query names gains
/// `weight` of a full score; every score is divided by `1 + weight` to stay in [0, 1].
pub fn add_speaker(s: &mut SignalScores, named: bool, weight: f32) {
    if weight <= 0.0 {
        return;
    }
    let m = if named { 1.0 } else { 0.0 };
    s.speaker = Some(m);
    s.fused = (s.fused + weight * m) / (1.0 + weight);
}

/// The speaker signal as a factor: memories whose speaker the query does not
/// name are divided by `factor` (≥ 1), so the named speaker's count `factor` times more.
pub fn scale_speaker(s: &mut SignalScores, named: bool, factor: f32) {
    if factor <= 1.0 {
        return;
    }
    s.speaker = Some(if named { 1.0 } else { 0.0 });
    if !named {
        s.fused /= factor;
    }
}

/// Recency decay factor for a memory `age_days` old: `floor + (1 - floor) · 0.5^(age / half_life)`.
/// A half-life of 0 (or less) disables decay (factor 1). Future timestamps count as age 0.
pub fn decay(age_days: f64, half_life_days: f64, floor: f64) -> f64 {
    if half_life_days <= 0.0 {
        return 1.0;
    }
    let floor = floor.clamp(0.0, 1.0);
    floor + (1.0 - floor) * 0.5f64.powf(age_days.max(0.0) / half_life_days)
}

/// Scores memories by the rare query entities they mention.
///
/// `rows` are (entity key, rowid) pairs already restricted to the filtered
/// set of about `n` memories. An entity that appears in `df` of them weighs
/// `ln(1 + n/df) / ln(1 + n)`: 1 for an entity only one memory mentions. An
/// entity more than [`UBIQUITOUS`] of the set mentions (a speaker's name on
/// every turn, the user's own name) says nothing about relevance and weighs 0.
/// A memory's score is the mean weight over the query's entities, so it is
/// absolute in [0, 1].
/// Share of the filtered set above which an entity carries no signal…
pub const UBIQUITOUS: f32 = 0.1;
/// …as long as more than this many memories mention it (small scopes keep their entities).
pub const MIN_UBIQUITOUS: f32 = 3.0;

pub fn score_entities(
    keys: &[String],
    rows: &[(String, i64)],
    n: usize,
    k: usize,
) -> Vec<(i64, f32)> {
    let mut df: HashMap<&str, usize> = HashMap::new();
    for (key, _) in rows {
        *df.entry(key.as_str()).or_default() += 1;
    }
    let n = n.max(rows.len()).max(1) as f32;
    let max = (1.0 + n).ln().max(f32::EPSILON);
    let weight = |key: &str| -> f32 {
        match df.get(key) {
            Some(&d) if d > 0 && (d as f32) <= (UBIQUITOUS * n).max(MIN_UBIQUITOUS) => {
                (1.0 + n / d as f32).ln() / max
            }
            _ => 0.0,
        }
    };
    let mut scores: HashMap<i64, f32> = HashMap::new();
    for (key, rowid) in rows {
        *scores.entry(*rowid).or_default() += weight(key) / keys.len().max(1) as f32;
    }
    let mut out: Vec<(i64, f32)> = scores.into_iter().filter(|(_, s)| *s > 0.0).collect();
    // Best first; among equals the newer row (higher rowid) wins.
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    out.truncate(k);
    out
}

/// BM25's term-frequency saturation and length normalisation (Lucene's and
/// SQLite FTS5's defaults).
const BM25_K1: f32 = 1.2;
const BM25_B: f32 = 0.75;

/// BM25 over the filtered set from each query term's matches in it:
/// `matches[t]` lists `(row, length in tokens)` of the memories holding
/// term `t`. A term's document frequency is its match count in the
/// filtered set of `n` memories, so one tenant's vocabulary never weighs
/// another's ranking; `avg_len` normalises lengths. Memories are
/// short: a term counts once per memory. Best `k` first; among equals the
/// newer row.
pub fn score_keywords(
    matches: &[Vec<(i64, u32)>],
    n: usize,
    avg_len: f32,
    k: usize,
) -> Vec<(i64, f32)> {
    let n = matches
        .iter()
        .map(Vec::len)
        .max()
        .unwrap_or(0)
        .max(n)
        .max(1) as f32;
    let avg_len = avg_len.max(1.0);
    let mut scores: HashMap<i64, f32> = HashMap::new();
    for term in matches {
        let df = term.len() as f32;
        if df == 0.0 {
            continue;
        }
        let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
        for &(row, len) in term {
            let norm = 1.0 - BM25_B + BM25_B * len.max(1) as f32 / avg_len;
            *scores.entry(row).or_default() += idf * (BM25_K1 + 1.0) / (1.0 + BM25_K1 * norm);
        }
    }
    let mut out: Vec<(i64, f32)> = scores.into_iter().collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    out.truncate(k);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SignalWeights;

    #[test]
    fn keyword_scores_favour_rare_terms_short_memories_and_more_terms() {
        // 100 memories; "ramen" in rows 1 and 2, "dinner" in row 1 and 39 others.
        let ramen = vec![(1, 10), (2, 10)];
        let dinner: Vec<(i64, u32)> = std::iter::once(1).chain(3..=41).map(|r| (r, 10)).collect();
        let s = score_keywords(&[ramen.clone(), dinner.clone()], 100, 10.0, 100);
        assert_eq!(s[0].0, 1, "both terms first");
        assert_eq!(s[1].0, 2, "the rare term next");
        let at = |row| s.iter().find(|(r, _)| *r == row).unwrap().1;
        assert!(at(2) > at(3), "a rare term outweighs a common one");
        assert!(at(3) > 0.0);
        // A longer memory with the same match scores less.
        let s = score_keywords(&[vec![(7, 5), (8, 40)]], 100, 10.0, 10);
        assert_eq!(s[0].0, 7);
        assert!(s[0].1 > s[1].1);
        // Ties: the newer row first; k bounds the answer.
        let s = score_keywords(&[vec![(3, 10), (9, 10)]], 100, 10.0, 1);
        assert_eq!(s, vec![(9, s[0].1)]);
        assert!(score_keywords(&[], 10, 10.0, 5).is_empty());
    }

    fn cfg(fusion: FusionMethod) -> RetrievalConfig {
        RetrievalConfig {
            fusion,
            weights: SignalWeights {
                semantic: 0.6,
                keyword: 0.25,
                entity: 0.15,
            },
            ..Default::default()
        }
    }

    #[test]
    fn speaker_signal_lifts_the_named_speakers_turns_and_stays_in_range() {
        let base = SignalScores {
            fused: 0.5,
            ..Default::default()
        };
        let (mut named, mut other, mut off) = (base, base, base);
        add_speaker(&mut named, true, 0.3);
        add_speaker(&mut other, false, 0.3);
        add_speaker(&mut off, true, 0.0);
        assert!((named.fused - 0.8 / 1.3).abs() < 1e-6);
        assert!((other.fused - 0.5 / 1.3).abs() < 1e-6);
        assert_eq!((named.speaker, other.speaker), (Some(1.0), Some(0.0)));
        assert_eq!(off, base, "weight 0 is off");
        let mut full = SignalScores {
            fused: 1.0,
            ..Default::default()
        };
        add_speaker(&mut full, true, 0.3);
        assert!(full.fused <= 1.0);
    }

    #[test]
    fn speaker_factor_divides_the_others() {
        let base = SignalScores {
            fused: 0.6,
            ..Default::default()
        };
        let (mut named, mut other, mut off) = (base, base, base);
        scale_speaker(&mut named, true, 2.0);
        scale_speaker(&mut other, false, 2.0);
        scale_speaker(&mut off, false, 1.0);
        assert_eq!((named.fused, other.fused), (0.6, 0.3));
        assert_eq!(named.speaker, Some(1.0));
        assert_eq!(off, base, "factor 1 is off");
    }

    #[test]
    fn calibrated_scores_keep_a_weak_best_match_weak() {
        let calibrated = RetrievalConfig {
            normalization: Normalization::Calibrated,
            ..cfg(FusionMethod::Weighted)
        };
        // One weak candidate: min-max would stretch it to 1.
        let f = fuse(&vec![(1, 0.25)], &vec![(1, 2.0)], &vec![], &calibrated);
        let c = calibrated.calibration;
        let want = 0.6 * (0.25 - c.semantic_low) / (c.semantic_high - c.semantic_low)
            + 0.25 * 2.0 / (2.0 + c.keyword_half);
        assert!(
            (f[&1].fused - want).abs() < 1e-5,
            "{} vs {want}",
            f[&1].fused
        );
        let minmax = fuse(
            &vec![(1, 0.25)],
            &vec![(1, 2.0)],
            &vec![],
            &cfg(FusionMethod::Weighted),
        );
        assert!(minmax[&1].fused > f[&1].fused);
    }

    #[test]
    fn max_scale_keeps_ratios() {
        assert_eq!(max_scale(&[2.0, 4.0, 1.0]), vec![0.5, 1.0, 0.25]);
        assert_eq!(max_scale(&[-1.0, 0.0]), vec![0.0, 0.0]);
    }

    #[test]
    fn min_max_edges() {
        assert_eq!(min_max(&[2.0, 4.0, 3.0]), vec![0.0, 1.0, 0.5]);
        assert_eq!(min_max(&[7.0]), vec![1.0]);
        assert_eq!(min_max(&[]), Vec::<f32>::new());
    }

    #[test]
    fn weighted_fusion_combines_signals() {
        let sem = vec![(1, 0.9), (2, 0.5), (3, 0.1)];
        let kw = vec![(2, 12.0), (4, 3.0)];
        let ent = vec![(2, 1.0), (1, 0.2)];
        let f = fuse(&sem, &kw, &ent, &cfg(FusionMethod::Weighted));
        assert!((f[&1].fused - (0.6 + 0.15 * 0.2)).abs() < 1e-6); // top semantic, weak entity
        assert!((f[&2].fused - (0.6 * 0.5 + 0.25 + 0.15)).abs() < 1e-6);
        assert_eq!(f[&3].fused, 0.0);
        assert_eq!(f[&4].fused, 0.0); // bottom of keyword list normalises to 0
        assert_eq!(f[&2].keyword, Some(12.0));
        assert!(
            f[&2].fused > f[&1].fused,
            "agreeing signals beat a single strong one"
        );
    }

    #[test]
    fn rrf_scales_to_unit_interval() {
        let sem = vec![(1, 0.9), (2, 0.5)];
        let kw = vec![(1, 5.0)];
        let ent = vec![(1, 1.0)];
        let f = fuse(&sem, &kw, &ent, &cfg(FusionMethod::Rrf));
        assert!(
            (f[&1].fused - 1.0).abs() < 1e-5,
            "rank 1 everywhere is a perfect score"
        );
        assert!(f[&2].fused < 0.6 && f[&2].fused > 0.5);
    }

    #[test]
    fn context_lifts_neighbours_and_adds_new_ones() {
        let mut scores: HashMap<u32, SignalScores> = HashMap::new();
        scores.insert(
            1,
            SignalScores {
                fused: 0.9,
                ..Default::default()
            },
        );
        scores.insert(
            2,
            SignalScores {
                fused: 0.1,
                ..Default::default()
            },
        );
        add_context(&mut scores, &[(1, vec![2, 3]), (2, vec![1])], 0.5);
        assert!(
            (scores[&2].fused - (0.1 + 0.45) / 1.5).abs() < 1e-6,
            "2 inherits from 1"
        );
        assert!((scores[&1].fused - (0.9 + 0.05) / 1.5).abs() < 1e-6);
        assert!(
            (scores[&3].fused - 0.45 / 1.5).abs() < 1e-6,
            "a neighbour nobody found joins"
        );
        assert_eq!(scores[&3].context, Some(0.9));
        let mut off = HashMap::from([(
            1u32,
            SignalScores {
                fused: 0.9,
                ..Default::default()
            },
        )]);
        add_context(&mut off, &[(1, vec![2])], 0.0);
        assert_eq!(off.len(), 1);
        assert_eq!(off[&1].fused, 0.9);
    }

    #[test]
    fn decay_halves_towards_floor() {
        assert_eq!(decay(10.0, 0.0, 0.5), 1.0);
        assert!((decay(0.0, 30.0, 0.0) - 1.0).abs() < 1e-12);
        assert!((decay(30.0, 30.0, 0.0) - 0.5).abs() < 1e-12);
        assert!((decay(30.0, 30.0, 0.5) - 0.75).abs() < 1e-12);
        assert!((decay(1e9, 30.0, 0.2) - 0.2).abs() < 1e-9);
        assert_eq!(decay(-5.0, 30.0, 0.0), 1.0);
    }

    #[test]
    fn rare_entities_weigh_more() {
        let rows = vec![
            ("caroline".to_owned(), 1),
            ("caroline".to_owned(), 2),
            ("caroline".to_owned(), 3),
            ("sweden".to_owned(), 3),
        ];
        let keys = vec!["caroline".to_owned(), "sweden".to_owned()];
        let scored = score_entities(&keys, &rows, 40, 10);
        assert_eq!(scored[0].0, 3, "mentions the rare entity");
        assert!(scored[0].1 > 0.5 && scored[0].1 <= 1.0);
        assert!(
            scored[1].1 < scored[0].1 / 2.0,
            "only the common entity: {}",
            scored[1].1
        );
        let common: Vec<(String, i64)> = (0..40).map(|i| ("caroline".to_owned(), i)).collect();
        assert!(
            score_entities(&keys[..1], &common, 40, 10).is_empty(),
            "an entity every memory mentions says nothing"
        );
        assert_eq!(
            score_entities(&keys[..1], &rows[..3], 3, 10).len(),
            3,
            "tiny scopes keep their entities"
        );
        assert!(score_entities(&keys, &[], 10, 10).is_empty());
    }
}
