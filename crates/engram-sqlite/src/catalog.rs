//! The in-memory catalog of current memory versions.
//!
//! Every current version is kept here with postings per scope id, so a
//! filter's candidate set can be sized and enumerated without SQL, and the
//! full filter is evaluated on the record itself.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use engram_core::filter::Filter;
use engram_core::memory::{Memory, MemoryId, ScopeField};
use engram_core::ports::{Cursor, ScopeIdStats};
use jiff::Timestamp;

/// A posting entry: ordered by time, then row.
type Entry = (i64, i64);

fn entry(rowid: i64, m: &Memory) -> Entry {
    (m.created_at.as_millisecond(), rowid)
}

#[derive(Default)]
pub struct Catalog {
    rows: HashMap<i64, Arc<Memory>>,
    current: HashMap<MemoryId, i64>,
    /// Sum of `tokens` over `rows`: the average length keyword scoring uses.
    tokens: u64,
    /// Per scope field, per id: that scope's memories in time order.
    postings: [HashMap<String, BTreeSet<Entry>>; 5],
    /// Per scope field, per id: the sum of its memories' `tokens`.
    scope_tokens: [HashMap<String, u64>; 5],
}

impl Catalog {
    /// An empty catalog with room for `n` memories.
    pub fn with_capacity(n: usize) -> Catalog {
        Catalog {
            rows: HashMap::with_capacity(n),
            current: HashMap::with_capacity(n),
            ..Catalog::default()
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn insert(&mut self, rowid: i64, memory: Arc<Memory>) {
        for (field, value) in memory.scope.iter() {
            let fresh = self.postings[field.index()]
                .entry(value.to_owned())
                .or_default()
                .insert(entry(rowid, &memory));
            if fresh {
                let sums = &mut self.scope_tokens[field.index()];
                match sums.get_mut(value) {
                    Some(sum) => *sum += u64::from(memory.tokens),
                    None => {
                        sums.insert(value.to_owned(), u64::from(memory.tokens));
                    }
                }
            }
        }
        if let Some(old) = self.current.insert(memory.id, rowid)
            && old != rowid
        {
            self.remove_row(old);
        }
        self.tokens += u64::from(memory.tokens);
        if let Some(replaced) = self.rows.insert(rowid, memory) {
            self.tokens -= u64::from(replaced.tokens);
        }
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
        let Some(memory) = self.rows.remove(&rowid) else {
            return;
        };
        self.tokens -= u64::from(memory.tokens);
        for (field, value) in memory.scope.iter() {
            let postings = &mut self.postings[field.index()];
            if let Some(set) = postings.get_mut(value) {
                let removed = set.remove(&entry(rowid, &memory));
                if set.is_empty() {
                    postings.remove(value);
                    self.scope_tokens[field.index()].remove(value);
                } else if removed && let Some(sum) = self.scope_tokens[field.index()].get_mut(value)
                {
                    *sum = sum.saturating_sub(u64::from(memory.tokens));
                }
            }
        }
    }

    /// The average length in tokens of the memories `filter`'s narrowest
    /// scope ids hold (of every memory without a scope).
    pub fn average_tokens(&self, filter: &Filter) -> f32 {
        let (sum, n) = match filter.scope_plan() {
            Some(plan) => plan
                .narrowest(&|f, v| self.count(f, v))
                .postings()
                .iter()
                .fold((0u64, 0usize), |(sum, n), (f, v)| {
                    (
                        sum + self.scope_tokens[f.index()].get(*v).copied().unwrap_or(0),
                        n + self.count(*f, v),
                    )
                }),
            None => (self.tokens, self.rows.len()),
        };
        sum as f32 / n.max(1) as f32
    }

    /// The length in tokens of `rowid` if it is a current, unexpired
    /// version matching `filter`.
    pub fn matching_tokens(&self, rowid: i64, filter: &Filter, now: Timestamp) -> Option<u32> {
        self.rows
            .get(&rowid)
            .filter(|m| m.is_live(now) && filter.matches(m.as_ref()))
            .map(|m| m.tokens)
    }

    pub fn get(&self, id: MemoryId) -> Option<&Arc<Memory>> {
        self.current.get(&id).and_then(|r| self.rows.get(r))
    }

    pub fn rowid_of(&self, id: MemoryId) -> Option<i64> {
        self.current.get(&id).copied()
    }

    pub fn id_of(&self, rowid: i64) -> Option<MemoryId> {
        self.rows.get(&rowid).map(|m| m.id)
    }

    fn count(&self, field: ScopeField, value: &str) -> usize {
        self.postings[field.index()]
            .get(value)
            .map_or(0, BTreeSet::len)
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
                        out.extend(set.iter().map(|(_, rowid)| *rowid));
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

    /// The live memories said just before and just after `id` in the same
    /// scope (identical scope ids), at most `max_gap_ms` away in time.
    pub fn neighbors(
        &self,
        id: MemoryId,
        filter: &Filter,
        max_gap_ms: i64,
        now: Timestamp,
    ) -> Vec<MemoryId> {
        let Some((&rowid, m)) = self
            .current
            .get(&id)
            .and_then(|r| self.rows.get_key_value(r))
        else {
            return Vec::new();
        };
        // The narrowest id the memory carries orders its conversation.
        let narrowest = [
            ScopeField::Run,
            ScopeField::User,
            ScopeField::Agent,
            ScopeField::App,
            ScopeField::Org,
        ]
        .into_iter()
        .find_map(|f| m.scope.get(f).map(|v| (f, v)));
        let Some((field, value)) = narrowest else {
            return Vec::new();
        };
        let Some(set) = self.postings[field.index()].get(value) else {
            return Vec::new();
        };
        let at = entry(rowid, m);
        let same = |e: &&Entry| {
            self.rows.get(&e.1).is_some_and(|n| {
                n.scope == m.scope
                    && n.is_live(now)
                    && (e.0 - at.0).abs() <= max_gap_ms
                    && filter.matches(n.as_ref())
            })
        };
        let before = set.range(..at).rev().take(8).find(same);
        let after = set
            .range((std::ops::Bound::Excluded(at), std::ops::Bound::Unbounded))
            .take(8)
            .find(same);
        before
            .into_iter()
            .chain(after)
            .filter_map(|e| self.id_of(e.1))
            .collect()
    }

    /// (entity key, rowid) pairs of the live memories matching `filter` that
    /// mention any of `keys`, found by walking the filtered set.
    pub fn entity_rows(
        &self,
        filter: &Filter,
        keys: &[String],
        now: Timestamp,
    ) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        for rowid in self.candidates(filter) {
            let Some(m) = self.rows.get(&rowid) else {
                continue;
            };
            if !m.is_live(now) || !filter.matches(m.as_ref()) {
                continue;
            }
            for e in &m.entities {
                let key = e.key();
                if keys.contains(&key)
                    && !out
                        .iter()
                        .any(|(k, r): &(String, i64)| *r == rowid && *k == key)
                {
                    out.push((key, rowid));
                }
            }
        }
        out
    }

    /// Whether `rowid` is a current, unexpired version matching `filter`.
    pub fn matches(&self, rowid: i64, filter: &Filter, now: Timestamp) -> bool {
        self.rows
            .get(&rowid)
            .is_some_and(|m| m.is_live(now) && filter.matches(m.as_ref()))
    }

    /// How many live memories match `filter`.
    pub fn count_matching(&self, filter: &Filter, now: Timestamp) -> usize {
        self.candidates(filter)
            .into_iter()
            .filter(|r| self.matches(*r, filter, now))
            .count()
    }

    /// Scope ids of the live memories matching `filter`, with counts and time span.
    pub fn scope_ids(&self, filter: &Filter, now: Timestamp) -> Vec<ScopeIdStats> {
        let mut out: std::collections::BTreeMap<(usize, String), ScopeIdStats> = Default::default();
        for r in self.candidates(filter) {
            let Some(m) = self.rows.get(&r) else { continue };
            if !(m.is_live(now) && filter.matches(m.as_ref())) {
                continue;
            }
            for (field, id) in m.scope.iter() {
                let e = out
                    .entry((field.index(), id.to_owned()))
                    .or_insert_with(|| ScopeIdStats {
                        field,
                        id: id.to_owned(),
                        memories: 0,
                        first: m.created_at,
                        last: m.created_at,
                    });
                e.memories += 1;
                e.first = e.first.min(m.created_at);
                e.last = e.last.max(m.created_at);
            }
        }
        out.into_values().collect()
    }

    /// Matching memories ordered by `(created_at, id)` descending, strictly after `after`.
    pub fn list(
        &self,
        filter: &Filter,
        now: Timestamp,
        after: Option<Cursor>,
        limit: usize,
    ) -> Vec<Memory> {
        let key = |m: &Memory| (m.created_at, m.id);
        let before_cursor = |m: &Memory| after.is_none_or(|c| key(m) < (c.created_at, c.id));
        let keep =
            |m: &&Arc<Memory>| m.is_live(now) && filter.matches(m.as_ref()) && before_cursor(m);
        let by_newest = |a: &&Arc<Memory>, b: &&Arc<Memory>| key(b).cmp(&key(a));
        let Some(plan) = filter.scope_plan() else {
            // No scope to walk: every row is a candidate.
            let mut hits: Vec<&Arc<Memory>> = self.rows.values().filter(keep).collect();
            if hits.len() > limit {
                hits.select_nth_unstable_by(limit, by_newest);
                hits.truncate(limit);
            }
            hits.sort_unstable_by(by_newest);
            return hits.into_iter().map(|m| (**m).clone()).collect();
        };
        // Walk the narrowest postings newest first, from the cursor on, and
        // stop once `limit` rows match (and the rows of the same millisecond
        // as the last are in): a page costs about a page, not the scope.
        let plan = plan.narrowest(&|f, v| self.count(f, v));
        let upper = match after {
            Some(c) => std::ops::Bound::Included((c.created_at.as_millisecond(), i64::MAX)),
            None => std::ops::Bound::Unbounded,
        };
        let mut lists: Vec<std::iter::Peekable<_>> = plan
            .postings()
            .iter()
            .filter_map(|(f, v)| self.postings[f.index()].get(*v))
            .map(|set| {
                set.range((std::ops::Bound::Unbounded, upper))
                    .rev()
                    .peekable()
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        let mut hits: Vec<&Arc<Memory>> = Vec::new();
        let mut cut: Option<i64> = None;
        // The newest entry left in any list, until none is left.
        while let Some(((ms, rowid), i)) = lists
            .iter_mut()
            .enumerate()
            .filter_map(|(i, l)| l.peek().map(|e| (**e, i)))
            .max()
        {
            if cut.is_some_and(|c| ms < c) {
                break;
            }
            lists[i].next();
            if !seen.insert(rowid) {
                continue;
            }
            if let Some(m) = self.rows.get(&rowid).filter(keep) {
                hits.push(m);
                if hits.len() == limit {
                    cut = Some(ms);
                }
            }
        }
        hits.sort_unstable_by(by_newest);
        hits.truncate(limit);
        hits.into_iter().map(|m| (**m).clone()).collect()
    }
}
