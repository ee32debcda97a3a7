//! The in-memory catalog of current memory versions.
//!
//! Every current version is kept here with postings per scope id, so a
//! filter's candidate set can be sized and enumerated without SQL, and the
//! full filter is evaluated on the record itself.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use engram_core::filter::Filter;
use engram_core::memory::{Memory, MemoryId, ScopeField};
use engram_core::store::Cursor;
use jiff::Timestamp;

#[derive(Default)]
pub struct Catalog {
    rows: HashMap<i64, Arc<Memory>>,
    current: HashMap<MemoryId, i64>,
    postings: [HashMap<String, HashSet<i64>>; 5],
}

impl Catalog {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn insert(&mut self, rowid: i64, memory: Arc<Memory>) {
        for (field, value) in memory.scope.iter() {
            self.postings[field.index()].entry(value.to_owned()).or_default().insert(rowid);
        }
        if let Some(old) = self.current.insert(memory.id, rowid)
            && old != rowid
        {
            self.remove_row(old);
        }
        self.rows.insert(rowid, memory);
    }

    pub fn remove(&mut self, rowid: i64) {
        if let Some(m) = self.rows.get(&rowid)
            && self.current.get(&m.id) == Some(&rowid)
        {
            self.current.remove(&m.id);
        }
        self.remove_row(rowid);
    }

    fn remove_row(&mut self, rowid: i64) {
        let Some(memory) = self.rows.remove(&rowid) else { return };
        for (field, value) in memory.scope.iter() {
            let postings = &mut self.postings[field.index()];
            if let Some(set) = postings.get_mut(value) {
                set.remove(&rowid);
                if set.is_empty() {
                    postings.remove(value);
                }
            }
        }
    }

    pub fn get(&self, id: MemoryId) -> Option<&Arc<Memory>> {
        self.current.get(&id).and_then(|r| self.rows.get(r))
    }

    pub fn id_of(&self, rowid: i64) -> Option<MemoryId> {
        self.rows.get(&rowid).map(|m| m.id)
    }

    fn count(&self, field: ScopeField, value: &str) -> usize {
        self.postings[field.index()].get(value).map_or(0, HashSet::len)
    }

    /// An upper bound on how many current versions match `filter`.
    pub fn estimate(&self, filter: &Filter) -> usize {
        match filter.scope_plan() {
            Some(plan) => plan.estimate(&|f, v| self.count(f, v)),
            None => self.rows.len(),
        }
    }

    /// A superset of the rows matching `filter`, from the narrowest postings.
    pub fn candidates(&self, filter: &Filter) -> Vec<i64> {
        match filter.scope_plan() {
            Some(plan) => {
                let plan = plan.narrowest(&|f, v| self.count(f, v));
                let lists = plan.postings();
                let mut out: Vec<i64> = Vec::new();
                for (f, v) in &lists {
                    if let Some(set) = self.postings[f.index()].get(*v) {
                        out.extend(set.iter().copied());
                    }
                }
                if lists.len() > 1 {
                    out.sort_unstable();
                    out.dedup();
                }
                out
            }
            None => self.rows.keys().copied().collect(),
        }
    }

    /// Whether `rowid` is a current, unexpired version matching `filter`.
    pub fn matches(&self, rowid: i64, filter: &Filter, now: Timestamp) -> bool {
        self.rows.get(&rowid).is_some_and(|m| m.is_live(now) && filter.matches(m.as_ref()))
    }

    /// Matching memories ordered by `(created_at, id)` descending, strictly after `after`.
    pub fn list(&self, filter: &Filter, now: Timestamp, after: Option<Cursor>, limit: usize) -> Vec<Memory> {
        let key = |m: &Memory| (m.created_at, m.id);
        let mut hits: Vec<&Arc<Memory>> = self
            .candidates(filter)
            .into_iter()
            .filter_map(|r| self.rows.get(&r))
            .filter(|m| m.is_live(now) && filter.matches(m.as_ref()))
            .filter(|m| after.is_none_or(|c| key(m) < (c.created_at, c.id)))
            .collect();
        let by_newest = |a: &&Arc<Memory>, b: &&Arc<Memory>| key(b).cmp(&key(a));
        if hits.len() > limit {
            hits.select_nth_unstable_by(limit, by_newest);
            hits.truncate(limit);
        }
        hits.sort_unstable_by(by_newest);
        hits.into_iter().map(|m| (**m).clone()).collect()
    }
}

/// Scores memories by the rarity-weighted share of query entities they mention.
///
/// `rows` are (entity key, rowid) pairs already restricted to the filtered
/// set of about `n` memories. An entity that appears in `df` of them weighs
/// `ln(1 + n / df)`, so a name every memory mentions (a speaker prefix)
/// counts for little and a rare one for a lot.
pub fn score_entities(keys: &[String], rows: &[(String, i64)], n: usize, k: usize) -> Vec<(i64, f32)> {
    let mut df: HashMap<&str, usize> = HashMap::new();
    for (key, _) in rows {
        *df.entry(key.as_str()).or_default() += 1;
    }
    let weight = |key: &str| -> f32 {
        let d = df.get(key).copied().unwrap_or(0);
        if d == 0 { 0.0 } else { (1.0 + n.max(d) as f32 / d as f32).ln() }
    };
    let total: f32 = keys.iter().map(|k| weight(k)).sum();
    if total <= 0.0 {
        return Vec::new();
    }
    let mut scores: HashMap<i64, f32> = HashMap::new();
    for (key, rowid) in rows {
        *scores.entry(*rowid).or_default() += weight(key) / total;
    }
    let mut out: Vec<(i64, f32)> = scores.into_iter().collect();
    // Best first; among equals the newer row (higher rowid) wins.
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    out.truncate(k);
    out
}

#[cfg(test)]
mod tests {
    use super::score_entities;

    #[test]
    fn rare_entities_weigh_more() {
        let rows = vec![
            ("caroline".to_owned(), 1),
            ("caroline".to_owned(), 2),
            ("caroline".to_owned(), 3),
            ("sweden".to_owned(), 3),
        ];
        let keys = vec!["caroline".to_owned(), "sweden".to_owned()];
        let scored = score_entities(&keys, &rows, 10, 10);
        assert_eq!(scored[0].0, 3);
        assert!((scored[0].1 - 1.0).abs() < 1e-6, "mentions every query entity");
        assert!(scored[1].1 < 0.5, "only the common entity");
        assert!(score_entities(&keys, &[], 10, 10).is_empty());
    }
}
