//! In-memory vector index for the embedded store.
//!
//! Two structures over the same keys:
//! - an **arena**: every vector in one contiguous `Vec<f16>`, scanned
//!   exactly with SIMD dot products ([`dot_f16`]). Half precision halves
//!   the memory of f32 and moves a cosine by less than 1e-3 (unit vectors);
//!   the f32 vectors stay in the store's table.
//! - an **HNSW graph** (usearch) for large filtered sets, with the filter
//!   applied during traversal. The graph keeps its own copy of each vector
//!   quantised to i8 (a quarter of f32) and compares them with our SIMD
//!   integer dot product; its candidates — several times `k` — are then
//!   re-scored from the arena, so what a search returns is ranked by the
//!   arena's cosine, not the quantised one.
//!
//! [`VectorIndex::search`] picks the path from the caller's estimate of the
//! filtered set's size, the way Qdrant does: below
//! [`IndexConfig::exact_threshold`] an exact scan over the candidates is both
//! exact and cheaper than walking the graph.
//!
//! Architecture invariant: this crate knows nothing about memories, scopes,
//! filters or SQL. Keys are opaque `u64`s; the caller supplies candidates and
//! a predicate.

mod simd;

use std::collections::HashMap;
use std::path::Path as FsPath;
use std::sync::RwLock;

use half::f16;
pub use simd::{dot, dot_f16, dot_i8};
use usearch::{Index, IndexOptions, MetricKind, ScalarKind, VectorType};

/// Errors of the vector index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("vector has {got} dimensions; the index holds {expected}")]
    Dimension { expected: usize, got: usize },
    #[error("HNSW graph: {0}")]
    Graph(String),
}

pub type Result<T, E = IndexError> = std::result::Result<T, E>;

/// Graph and path-choice parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IndexConfig {
    /// Filtered sets estimated below this many vectors are scanned exactly.
    pub exact_threshold: usize,
    /// HNSW `M`.
    pub connectivity: usize,
    /// HNSW `ef_construction`.
    pub expansion_add: usize,
    /// HNSW `ef` at query time.
    pub expansion_search: usize,
}

impl Default for IndexConfig {
    fn default() -> Self {
        // exact_threshold: measured crossover on a 2-core machine, see docs/benchmarks.md.
        IndexConfig {
            exact_threshold: 12_000,
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 128,
        }
    }
}

/// Which search ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchPath {
    Exact,
    Hnsw,
}

/// Contiguous half-precision vector storage with key ↔ slot maps.
struct Arena {
    dim: usize,
    data: Vec<f16>,
    keys: Vec<u64>,
    slots: HashMap<u64, usize>,
}

impl Arena {
    fn vector(&self, slot: usize) -> &[f16] {
        &self.data[slot * self.dim..(slot + 1) * self.dim]
    }

    fn vector_f32(&self, slot: usize) -> Vec<f32> {
        self.vector(slot).iter().map(|x| x.to_f32()).collect()
    }

    fn insert(&mut self, key: u64, v: &[f32]) {
        let halves = v.iter().map(|x| f16::from_f32(*x));
        if let Some(&slot) = self.slots.get(&key) {
            for (to, x) in self.data[slot * self.dim..(slot + 1) * self.dim]
                .iter_mut()
                .zip(halves)
            {
                *to = x;
            }
            return;
        }
        self.slots.insert(key, self.keys.len());
        self.keys.push(key);
        self.data.extend(halves);
    }

    fn remove(&mut self, key: u64) -> bool {
        let Some(slot) = self.slots.remove(&key) else {
            return false;
        };
        let last = self.keys.len() - 1;
        if slot != last {
            let moved = self.keys[last];
            self.keys[slot] = moved;
            self.slots.insert(moved, slot);
            let (head, tail) = self.data.split_at_mut(last * self.dim);
            head[slot * self.dim..(slot + 1) * self.dim].copy_from_slice(&tail[..self.dim]);
        }
        self.keys.pop();
        self.data.truncate(last * self.dim);
        true
    }
}

/// The vector index. All methods take `&self`; it is safe to share.
pub struct VectorIndex {
    config: IndexConfig,
    dim: usize,
    arena: RwLock<Arena>,
    graph: RwLock<Index>,
}

fn graph_err(e: impl std::fmt::Display) -> IndexError {
    IndexError::Graph(e.to_string())
}

impl VectorIndex {
    pub fn new(dim: usize, config: IndexConfig) -> Result<VectorIndex> {
        let graph = new_graph(dim, &config)?;
        let arena = Arena {
            dim,
            data: Vec::new(),
            keys: Vec::new(),
            slots: HashMap::new(),
        };
        Ok(VectorIndex {
            config,
            dim,
            arena: RwLock::new(arena),
            graph: RwLock::new(graph),
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn config(&self) -> IndexConfig {
        self.config
    }

    fn check(&self, v: &[f32]) -> Result<()> {
        if v.len() != self.dim {
            return Err(IndexError::Dimension {
                expected: self.dim,
                got: v.len(),
            });
        }
        Ok(())
    }

    // Poisoning only happens if a thread panicked while holding the lock; the
    // structures are updated in place with no intermediate invalid state that
    // a reader could observe, so recovering the guard is sound.
    fn arena_read(&self) -> std::sync::RwLockReadGuard<'_, Arena> {
        self.arena.read().unwrap_or_else(|e| e.into_inner())
    }
    fn arena_write(&self) -> std::sync::RwLockWriteGuard<'_, Arena> {
        self.arena.write().unwrap_or_else(|e| e.into_inner())
    }
    fn graph_read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.graph.read().unwrap_or_else(|e| e.into_inner())
    }
    fn graph_write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.graph.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes room in the arena for `additional` more vectors at once (a
    /// load that knows its size avoids the doublings' transient copies).
    pub fn reserve(&self, additional: usize) {
        let mut arena = self.arena_write();
        arena.data.reserve_exact(additional * self.dim);
        arena.keys.reserve_exact(additional);
        arena.slots.reserve(additional);
    }

    /// Adds (or replaces) vectors in the arena only. Call [`index_pending`](Self::index_pending)
    /// or [`rebuild_graph`](Self::rebuild_graph) to put them in the graph.
    pub fn insert_arena(&self, items: &[(u64, &[f32])]) -> Result<()> {
        let mut arena = self.arena_write();
        for (key, v) in items {
            self.check(v)?;
            arena.insert(*key, v);
        }
        Ok(())
    }

    /// Adds vectors to both the arena and the graph.
    pub fn insert(&self, items: &[(u64, &[f32])]) -> Result<()> {
        self.insert_arena(items)?;
        self.add_to_graph(items)
    }

    fn add_to_graph(&self, items: &[(u64, &[f32])]) -> Result<()> {
        {
            let graph = self.graph_read();
            if graph.size() + items.len() > graph.capacity() {
                drop(graph);
                let graph = self.graph_write();
                let want = (graph.size() + items.len())
                    .max(graph.capacity() * 2)
                    .max(1024);
                graph
                    .reserve_capacity_and_threads(want, GRAPH_THREADS)
                    .map_err(graph_err)?;
            }
        }
        // usearch supports concurrent add and search once capacity is reserved:
        // a large batch is added by two threads.
        let graph = self.graph_read();
        let add = |items: &[(u64, &[f32])]| -> Result<()> {
            let mut q = vec![0i8; self.dim];
            for (key, v) in items {
                if graph.contains(*key) {
                    graph.remove(*key).map_err(graph_err)?;
                }
                quantise(v, &mut q);
                graph.add(*key, &q).map_err(graph_err)?;
            }
            Ok(())
        };
        if items.len() < PARALLEL_ADD {
            return add(items);
        }
        let (left, right) = items.split_at(items.len() / 2);
        std::thread::scope(|s| {
            let other = s.spawn(|| add(right));
            let mine = add(left);
            let theirs = other
                .join()
                .map_err(|_| IndexError::Graph("graph insert thread panicked".into()))?;
            mine.and(theirs)
        })
    }

    /// Removes keys from both structures (physical removal, for erasure).
    pub fn remove(&self, keys: &[u64]) -> Result<usize> {
        let mut removed = 0;
        let mut arena = self.arena_write();
        let graph = self.graph_write();
        for key in keys {
            if arena.remove(*key) {
                removed += 1;
            }
            if graph.contains(*key) {
                graph.remove(*key).map_err(graph_err)?;
            }
        }
        Ok(removed)
    }

    /// Vectors in the arena.
    pub fn len(&self) -> usize {
        self.arena_read().keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Vectors in the graph.
    pub fn graph_len(&self) -> usize {
        self.graph_read().size()
    }

    /// Whether `key` is in the graph.
    pub fn graph_contains(&self, key: u64) -> bool {
        self.graph_read().contains(key)
    }

    /// The stored vector of `key` (half precision, widened).
    pub fn get(&self, key: u64) -> Option<Vec<f32>> {
        let arena = self.arena_read();
        arena.slots.get(&key).map(|&s| arena.vector_f32(s))
    }

    /// Cosine similarity (vectors are unit length) between `query` and `key`'s vector.
    pub fn similarity(&self, query: &[f32], key: u64) -> Option<f32> {
        let arena = self.arena_read();
        arena
            .slots
            .get(&key)
            .map(|&s| dot_f16(query, arena.vector(s)))
    }

    /// How many graph candidates a top-`k` search re-scores: `RESCORE × k`,
    /// and at least the search's `ef` (the graph holds that many candidates
    /// anyway; returning them all costs nothing).
    fn candidates(&self, k: usize) -> usize {
        k.saturating_mul(RESCORE)
            .max(RESCORE_MIN)
            .max(self.config.expansion_search)
    }

    /// Which path a filtered set of `estimated` vectors takes.
    pub fn choose(&self, estimated: usize) -> SearchPath {
        if estimated < self.config.exact_threshold {
            SearchPath::Exact
        } else {
            SearchPath::Hnsw
        }
    }

    /// Exact top-`k` by cosine over `candidates` that pass `keep`.
    pub fn exact(
        &self,
        query: &[f32],
        candidates: impl IntoIterator<Item = u64>,
        k: usize,
        keep: impl Fn(u64) -> bool,
    ) -> Result<Vec<(u64, f32)>> {
        self.check(query)?;
        let arena = self.arena_read();
        let mut top = TopK::new(k);
        for key in candidates {
            let Some(&slot) = arena.slots.get(&key) else {
                continue;
            };
            if keep(key) {
                top.push(key, dot_f16(query, arena.vector(slot)));
            }
        }
        Ok(top.into_sorted())
    }

    /// Exact top-`k` over every vector that passes `keep` (no candidate list).
    pub fn exact_all(
        &self,
        query: &[f32],
        k: usize,
        keep: impl Fn(u64) -> bool,
    ) -> Result<Vec<(u64, f32)>> {
        self.check(query)?;
        let arena = self.arena_read();
        let mut top = TopK::new(k);
        for (slot, key) in arena.keys.iter().enumerate() {
            if keep(*key) {
                top.push(*key, dot_f16(query, arena.vector(slot)));
            }
        }
        Ok(top.into_sorted())
    }

    /// Approximate top-`k` by cosine through the graph, visiting only keys
    /// that pass `keep`: the graph's best `RESCORE × k` candidates by their
    /// quantised vectors, re-scored from the arena.
    pub fn hnsw(
        &self,
        query: &[f32],
        k: usize,
        keep: impl Fn(u64) -> bool,
    ) -> Result<Vec<(u64, f32)>> {
        self.check(query)?;
        if k == 0 {
            return Ok(Vec::new());
        }
        let mut q = vec![0i8; self.dim];
        quantise(query, &mut q);
        let matches = {
            let graph = self.graph_read();
            graph
                .filtered_search(&q, self.candidates(k), keep)
                .map_err(graph_err)?
        };
        let arena = self.arena_read();
        let mut top = TopK::new(k);
        for key in matches.keys {
            if let Some(&slot) = arena.slots.get(&key) {
                top.push(key, dot_f16(query, arena.vector(slot)));
            }
        }
        Ok(top.into_sorted())
    }

    /// Keys in the arena that are missing from the graph, e.g. after loading a stale graph file.
    pub fn pending(&self) -> Vec<u64> {
        let arena = self.arena_read();
        let graph = self.graph_read();
        arena
            .keys
            .iter()
            .copied()
            .filter(|k| !graph.contains(*k))
            .collect()
    }

    /// Adds every arena vector missing from the graph. Returns how many.
    pub fn index_pending(&self) -> Result<usize> {
        let pending = self.pending();
        for chunk in pending.chunks(256) {
            let vectors: Vec<(u64, Vec<f32>)> = chunk
                .iter()
                .filter_map(|k| self.get(*k).map(|v| (*k, v)))
                .collect();
            let items: Vec<(u64, &[f32])> =
                vectors.iter().map(|(k, v)| (*k, v.as_slice())).collect();
            self.add_to_graph(&items)?;
        }
        Ok(pending.len())
    }

    /// Drops the graph and builds it again from the arena, using `threads` threads.
    pub fn rebuild_graph(&self, threads: usize) -> Result<()> {
        let fresh = new_graph(self.dim, &self.config)?;
        let arena = self.arena_read();
        fresh
            .reserve_capacity_and_threads(arena.keys.len().max(1024), GRAPH_THREADS)
            .map_err(graph_err)?;
        let n = arena.keys.len();
        let per = n.div_ceil(threads.max(1)).max(1);
        let result: Result<()> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .step_by(per)
                .map(|start| {
                    let (arena, fresh) = (&arena, &fresh);
                    s.spawn(move || -> Result<()> {
                        let mut q = vec![0i8; arena.dim];
                        for slot in start..(start + per).min(n) {
                            quantise(&arena.vector_f32(slot), &mut q);
                            fresh.add(arena.keys[slot], &q).map_err(graph_err)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join()
                    .map_err(|_| IndexError::Graph("graph build thread panicked".into()))??;
            }
            Ok(())
        });
        result?;
        drop(arena);
        *self.graph_write() = fresh;
        Ok(())
    }

    /// Writes the graph to `path` (atomically: a temporary file then rename).
    pub fn save_graph(&self, path: &FsPath) -> Result<()> {
        let tmp = path.with_extension("tmp");
        let tmp_str = tmp
            .to_str()
            .ok_or_else(|| IndexError::Graph("path is not UTF-8".into()))?;
        self.graph_read().save(tmp_str).map_err(graph_err)?;
        std::fs::rename(&tmp, path).map_err(graph_err)
    }

    /// The graph serialised, for a caller that stores it itself (an
    /// encrypted store keeps it inside its encrypted database).
    pub fn graph_bytes(&self) -> Result<Vec<u8>> {
        let graph = self.graph_read();
        let mut bytes = vec![0u8; graph.serialized_length()];
        graph.save_to_buffer(&mut bytes).map_err(graph_err)?;
        Ok(bytes)
    }

    /// Replaces the graph with one serialised by [`graph_bytes`](Self::graph_bytes).
    pub fn load_graph_bytes(&self, bytes: &[u8]) -> Result<()> {
        let graph = new_graph(self.dim, &self.config)?;
        graph.load_from_buffer(bytes).map_err(graph_err)?;
        self.install_loaded(graph)
    }

    /// Replaces the graph with the one saved at `path`. Keys in the file that
    /// are not in the arena are removed; arena keys missing from the file are
    /// reported by [`pending`](Self::pending).
    pub fn load_graph(&self, path: &FsPath) -> Result<()> {
        let path_str = path
            .to_str()
            .ok_or_else(|| IndexError::Graph("path is not UTF-8".into()))?;
        let graph = new_graph(self.dim, &self.config)?;
        graph.load(path_str).map_err(graph_err)?;
        self.install_loaded(graph)
    }

    /// Checks a loaded graph against this index and puts it in place.
    fn install_loaded(&self, mut graph: Index) -> Result<()> {
        if graph.dimensions() != self.dim {
            return Err(IndexError::Dimension {
                expected: self.dim,
                got: graph.dimensions(),
            });
        }
        if graph.scalar_kind() != ScalarKind::I8 {
            // Saved by a version that kept f32 vectors in the graph: rebuild.
            return Err(IndexError::Graph(
                "the graph file holds unquantised vectors".into(),
            ));
        }
        // Loading restores usearch's own metric; ours goes back on.
        set_metric(&mut graph, self.dim)?;
        graph
            .reserve_capacity_and_threads(graph.size().max(1024), GRAPH_THREADS)
            .map_err(graph_err)?;
        graph.change_expansion_search(self.config.expansion_search);
        *self.graph_write() = graph;
        Ok(())
    }

    /// Removes graph keys that are not in the arena (the file was saved before they were erased).
    pub fn drop_stale(&self, stale: &[u64]) -> Result<()> {
        let graph = self.graph_write();
        for key in stale {
            if graph.contains(*key) {
                graph.remove(*key).map_err(graph_err)?;
            }
        }
        Ok(())
    }

    /// Bytes of memory used by vectors and graph.
    pub fn memory_bytes(&self) -> usize {
        self.arena_read().data.capacity() * std::mem::size_of::<f16>()
            + self.graph_read().memory_usage()
    }
}

/// Searches and inserts the graph serves at once: usearch keeps one
/// context per concurrent caller and refuses a caller when all are taken.
const GRAPH_THREADS: usize = 64;
/// Batches at least this large are added to the graph by two threads.
const PARALLEL_ADD: usize = 256;
/// The graph returns this many candidates per result asked for (at least
/// [`RESCORE_MIN`]) for re-scoring from the arena.
const RESCORE: usize = 4;
const RESCORE_MIN: usize = 40;

/// The i8 scale for a `dim`-dimensional unit vector: a component of a
/// random unit vector has a standard deviation of 1/√dim, so ±8σ (capped
/// at ±1) spans the i8 range; rarer, larger components saturate, which
/// only blurs the graph's candidate order (results are re-scored).
fn scale(dim: usize) -> f32 {
    let range = (8.0 / (dim.max(1) as f32).sqrt()).min(1.0);
    127.0 / range
}

fn quantise(v: &[f32], out: &mut [i8]) {
    let s = scale(v.len());
    for (o, x) in out.iter_mut().zip(v) {
        // In range after the clamp; `as` on a finite in-range float is exact truncation.
        *o = (x * s).round().clamp(-127.0, 127.0) as i8;
    }
}

/// Puts our distance on the graph: 1 − the dot product of the quantised
/// vectors, rescaled to cosine units.
fn set_metric(graph: &mut Index, dim: usize) -> Result<()> {
    let norm = 1.0 / (scale(dim) * scale(dim));
    // The trait method, not `Index::change_metric`, which unwraps the error.
    <i8 as VectorType>::change_metric(
        graph,
        Box::new(move |a: *const i8, b: *const i8| {
            // SAFETY: usearch calls the metric with pointers to two stored or
            // query vectors of this graph, each `dim` i8 scalars long (the
            // graph was created with `dim` dimensions and i8 quantisation).
            let (a, b) = unsafe {
                (
                    std::slice::from_raw_parts(a, dim),
                    std::slice::from_raw_parts(b, dim),
                )
            };
            1.0 - dot_i8(a, b) as f32 * norm
        }),
    )
    .map_err(graph_err)
}

fn new_graph(dim: usize, config: &IndexConfig) -> Result<Index> {
    let options = IndexOptions {
        dimensions: dim,
        metric: MetricKind::IP,
        quantization: ScalarKind::I8,
        connectivity: config.connectivity,
        expansion_add: config.expansion_add,
        expansion_search: config.expansion_search,
        multi: false,
    };
    let mut graph = Index::new(&options).map_err(graph_err)?;
    set_metric(&mut graph, dim)?;
    Ok(graph)
}

/// A bounded min-heap keeping the `k` best scores.
struct TopK {
    k: usize,
    heap: std::collections::BinaryHeap<std::cmp::Reverse<Scored>>,
}

#[derive(PartialEq)]
struct Scored(f32, u64);
impl Eq for Scored {}
impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scored {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0
            .total_cmp(&other.0)
            .then_with(|| other.1.cmp(&self.1))
    }
}

impl TopK {
    fn new(k: usize) -> TopK {
        TopK {
            k,
            heap: std::collections::BinaryHeap::with_capacity(k + 1),
        }
    }

    fn push(&mut self, key: u64, score: f32) {
        if self.k == 0 {
            return;
        }
        if self.heap.len() < self.k {
            self.heap.push(std::cmp::Reverse(Scored(score, key)));
        } else if let Some(min) = self.heap.peek()
            && Scored(score, key) > min.0
        {
            self.heap.pop();
            self.heap.push(std::cmp::Reverse(Scored(score, key)));
        }
    }

    fn into_sorted(self) -> Vec<(u64, f32)> {
        let mut v: Vec<(u64, f32)> = self.heap.into_iter().map(|r| (r.0.1, r.0.0)).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random unit vectors (xorshift), clustered around a few centres.
    fn vectors(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut s = seed.max(1);
        let mut rnd = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 10_000) as f32 / 10_000.0 - 0.5
        };
        let centres: Vec<Vec<f32>> = (0..8).map(|_| (0..dim).map(|_| rnd()).collect()).collect();
        (0..n)
            .map(|i| {
                let c = &centres[i % centres.len()];
                let mut v: Vec<f32> = c.iter().map(|x| x + 0.3 * rnd()).collect();
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.iter_mut().for_each(|x| *x /= norm);
                v
            })
            .collect()
    }

    /// `data` keyed by position, as the index takes it.
    fn keyed(data: &[Vec<f32>]) -> Vec<(u64, &[f32])> {
        data.iter()
            .enumerate()
            .map(|(i, v)| (i as u64, v.as_slice()))
            .collect()
    }

    fn build(n: usize) -> (VectorIndex, Vec<Vec<f32>>) {
        let data = vectors(n, 32, 7);
        let idx = VectorIndex::new(
            32,
            IndexConfig {
                exact_threshold: 100,
                ..Default::default()
            },
        )
        .unwrap();
        let items = keyed(&data);
        idx.insert(&items).unwrap();
        (idx, data)
    }

    #[test]
    fn exact_finds_itself_first_and_respects_predicate() {
        let (idx, data) = build(500);
        let hits = idx.exact(&data[42], 0..500u64, 5, |_| true).unwrap();
        assert_eq!(hits[0].0, 42);
        // Half precision: a vector's cosine with itself is 1 within 1e-3.
        assert!((hits[0].1 - 1.0).abs() < 1e-3, "{}", hits[0].1);
        assert!(hits.windows(2).all(|w| w[0].1 >= w[1].1));
        let even = idx.exact(&data[42], 0..500u64, 5, |k| k % 2 == 1).unwrap();
        assert!(even.iter().all(|(k, _)| k % 2 == 1));
        assert_eq!(even.len(), 5);
    }

    #[test]
    fn hnsw_agrees_with_exact_under_a_filter() {
        let (idx, data) = build(2000);
        let mut agree = 0;
        for q in 0..20 {
            let exact = idx.exact_all(&data[q * 7], 10, |k| k % 3 == 0).unwrap();
            let approx = idx.hnsw(&data[q * 7], 10, |k| k % 3 == 0).unwrap();
            assert!(
                approx.iter().all(|(k, _)| k % 3 == 0),
                "the filter is applied during traversal"
            );
            agree += approx
                .iter()
                .filter(|(k, _)| exact.iter().any(|(e, _)| e == k))
                .count();
        }
        assert!(agree as f32 / 200.0 >= 0.95, "recall@10 {agree}/200");
    }

    /// The graph compares i8 vectors; what it returns is re-scored from the
    /// arena. At the model's real width, its top-10 under a filter is
    /// nearly the exact top-10 and carries the exact scores.
    #[test]
    fn quantised_graph_top10_matches_exact_rescoring() {
        let data = vectors(3000, 384, 11);
        let idx = VectorIndex::new(384, IndexConfig::default()).unwrap();
        let items = keyed(&data);
        idx.insert(&items).unwrap();
        let mut found = 0;
        for q in 0..50 {
            let query = &data[q * 13 + 1];
            let exact = idx.exact_all(query, 10, |k| k % 2 == 0).unwrap();
            let approx = idx.hnsw(query, 10, |k| k % 2 == 0).unwrap();
            assert_eq!(approx.len(), 10);
            for (key, score) in &approx {
                assert_eq!(
                    Some(*score),
                    idx.similarity(query, *key),
                    "scores come from the arena"
                );
            }
            assert!(approx.windows(2).all(|w| w[0].1 >= w[1].1));
            found += approx
                .iter()
                .filter(|(k, _)| exact.iter().any(|(e, _)| e == k))
                .count();
        }
        // 0.982 measured (491/500, three runs); the bar leaves room for the
        // graph's nondeterministic two-thread build. The product's figure at
        // scale is `engram bench --crossover` (docs/benchmarks.md).
        assert!(found as f32 / 500.0 >= 0.97, "recall@10 {found}/500");
    }

    #[test]
    fn remove_and_replace() {
        let (idx, data) = build(300);
        assert_eq!(idx.remove(&[5, 6, 999]).unwrap(), 2);
        assert_eq!(idx.len(), 298);
        assert!(idx.get(5).is_none());
        let hits = idx.hnsw(&data[5], 5, |_| true).unwrap();
        assert!(hits.iter().all(|(k, _)| *k != 5));
        // The slot of the last key moved into 5's place; it is still found.
        assert_eq!(
            idx.exact(&data[299], [299u64], 1, |_| true).unwrap()[0].0,
            299
        );
        idx.insert(&[(5, data[6].as_slice())]).unwrap();
        assert_eq!(
            idx.similarity(&data[6], 5).map(|s| (s * 1000.0).round()),
            Some(1000.0)
        );
    }

    #[test]
    fn save_load_and_pending() {
        let (idx, data) = build(400);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("graph.usearch");
        idx.save_graph(&path).unwrap();
        let fresh = VectorIndex::new(32, IndexConfig::default()).unwrap();
        let items = keyed(&data);
        fresh.insert_arena(&items).unwrap();
        fresh.insert_arena(&[(1000, data[0].as_slice())]).unwrap();
        fresh.load_graph(&path).unwrap();
        assert_eq!(fresh.graph_len(), 400);
        assert_eq!(fresh.pending(), vec![1000]);
        assert_eq!(fresh.index_pending().unwrap(), 1);
        assert!(fresh.pending().is_empty());
        fresh.rebuild_graph(2).unwrap();
        assert_eq!(fresh.graph_len(), 401);
        assert_eq!(fresh.hnsw(&data[10], 1, |_| true).unwrap()[0].0, 10);
    }

    #[test]
    fn graph_bytes_round_trip() {
        let (idx, data) = build(300);
        let bytes = idx.graph_bytes().unwrap();
        let fresh = VectorIndex::new(32, IndexConfig::default()).unwrap();
        let items = keyed(&data);
        fresh.insert_arena(&items).unwrap();
        fresh.load_graph_bytes(&bytes).unwrap();
        assert_eq!(fresh.graph_len(), 300);
        assert!(fresh.pending().is_empty());
        assert_eq!(fresh.hnsw(&data[17], 1, |_| true).unwrap()[0].0, 17);
        assert!(fresh.load_graph_bytes(&bytes[..bytes.len() / 2]).is_err());
    }

    #[test]
    fn dimension_mismatch_is_an_error() {
        let idx = VectorIndex::new(4, IndexConfig::default()).unwrap();
        assert!(matches!(
            idx.insert(&[(1, &[1.0, 0.0][..])]),
            Err(IndexError::Dimension {
                expected: 4,
                got: 2
            })
        ));
    }

    #[test]
    fn path_choice_follows_threshold() {
        let idx = VectorIndex::new(
            4,
            IndexConfig {
                exact_threshold: 1000,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(idx.choose(999), SearchPath::Exact);
        assert_eq!(idx.choose(1000), SearchPath::Hnsw);
    }
}
