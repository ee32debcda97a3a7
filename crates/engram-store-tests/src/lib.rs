//! The store conformance suite.
//!
//! Every case is an `async fn(Fixture)`; [`store_suite!`] expands to one
//! `#[tokio::test]` per case for a backend's fixture factory, the way
//! ripgrep's `rgtest!` runs each test per regex engine:
//!
//! ```ignore
//! engram_store_tests::store_suite!(sqlite_fixture);
//! ```
//!
//! Vectors are small synthetic unit vectors so the suite needs no model.

use std::any::Any;
use std::sync::Arc;

use engram_core::filter::Filter;
use engram_core::memory::{
    Entity, Event, HistoryEvent, Memory, MemoryId, MemoryKind, Scope, text_hash,
};
use engram_core::ports::{Cursor, ModelInfo, Store, VectorPath, Visibility, WriteOp};
use engram_core::{ErrorCode, filter};
use jiff::{SignedDuration, Timestamp};
use serde_json::json;

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

fn t0() -> Timestamp {
    Timestamp::from_second(1_750_000_000).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn vis() -> Visibility {
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
    }
}

fn history(m: &Memory, event: Event, old: Option<&str>, new: Option<&str>) -> HistoryEvent {
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
fn revised(prev: &Memory, text: &str, at: Timestamp) -> Memory {
    let mut next = prev.clone();
    next.version = prev.version + 1;
    next.text = text.into();
    next.updated_at = at;
    next
}

/// The update writing `next` over `prev`, with its history row.
fn update(prev: &Memory, next: &Memory, embedding: Option<Vec<f32>>) -> WriteOp {
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

async fn bound(f: &Fixture) {
    f.store.bind_model(&model()).await.expect("bind model");
}

fn ids(hits: &[(MemoryId, f32)]) -> Vec<MemoryId> {
    hits.iter().map(|(id, _)| *id).collect()
}

/// The model is recorded once; a different one is refused with a clear error.
pub async fn binds_model_and_refuses_mismatch(f: Fixture) {
    bound(&f).await;
    bound(&f).await; // same model again is fine
    let err = f
        .store
        .bind_model(&ModelInfo {
            id: "other@2".into(),
            dim: DIM,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::EmbeddingModelMismatch);
    assert!(
        err.message.contains("suite-model@1") && err.message.contains("other@2"),
        "{}",
        err.message
    );
    let err = f
        .store
        .bind_model(&ModelInfo {
            id: "suite-model@1".into(),
            dim: 16,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::EmbeddingModelMismatch);
}

/// Inserted memories come back whole; unknown ids are absent.
pub async fn insert_and_get(f: Fixture) {
    bound(&f).await;
    let mut a = memory("Alice moved to Lisbon", user("alice"), 0);
    a.metadata = json!({"city": "Lisbon"})
        .as_object()
        .cloned()
        .unwrap_or_default();
    a.categories = vec!["travel".into()];
    a.entities = vec![Entity {
        name: "Lisbon".into(),
        kind: "name".into(),
    }];
    let b = memory("Bob likes tea", user("bob"), 1);
    f.store
        .apply(vec![insert(&a, vector(0, 0.0)), insert(&b, vector(1, 0.0))])
        .await
        .unwrap();
    let got = f.store.get(a.id, vis()).await.unwrap().expect("present");
    assert_eq!(got, a);
    assert!(
        f.store
            .get(uuid::Uuid::now_v7(), vis())
            .await
            .unwrap()
            .is_none()
    );
    let many = f
        .store
        .get_many(&[b.id, uuid::Uuid::now_v7(), a.id], vis())
        .await
        .unwrap();
    assert_eq!(
        many.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![b.id, a.id]
    );
    let history = f.store.history(a.id).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].event, Event::Add);
    assert_eq!(
        history[0].new_text.as_deref(),
        Some("Alice moved to Lisbon")
    );
}

/// An update writes a new version, closes the old one, re-indexes, and keeps history.
pub async fn update_versions_and_reindexes(f: Fixture) {
    bound(&f).await;
    let a = memory("Alice works at Acme", user("alice"), 0);
    f.store
        .apply(vec![insert(&a, vector(0, 0.0))])
        .await
        .unwrap();
    let mut next = revised(
        &a,
        "Alice joined Stripe",
        a.updated_at + SignedDuration::from_secs(60),
    );
    next.hash = text_hash(&next.text);
    next.entities = engram_core::text::tag_entities(&next.text);
    f.store
        .apply(vec![update(&a, &next, Some(vector(3, 0.0)))])
        .await
        .unwrap();

    let got = f
        .store
        .get(a.id, vis())
        .await
        .unwrap()
        .expect("current version");
    assert_eq!((got.version, got.text.as_str()), (2, "Alice joined Stripe"));
    let scope = Filter::from_scope(&user("alice"));
    let near_old = f
        .store
        .vector_search(&scope, vis(), &vector(0, 0.0), 5)
        .await
        .unwrap();
    assert_eq!(
        ids(&near_old.hits),
        vec![a.id],
        "one current version, found once"
    );
    assert!(
        near_old.hits[0].1 < 0.5,
        "the old vector is gone: {:?}",
        near_old.hits
    );
    let near_new = f
        .store
        .vector_search(&scope, vis(), &vector(3, 0.0), 5)
        .await
        .unwrap();
    assert!((near_new.hits[0].1 - 1.0).abs() < 1e-4);
    assert!(
        f.store
            .keyword_search(&scope, vis(), &["acme".into()], 5)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ids(&f
            .store
            .keyword_search(&scope, vis(), &["stripe".into()], 5)
            .await
            .unwrap()),
        vec![a.id]
    );
    assert_eq!(
        ids(&f
            .store
            .entity_search(&scope, vis(), &["stripe".into()], 5)
            .await
            .unwrap()),
        vec![a.id]
    );
    let events: Vec<Event> = f
        .store
        .history(a.id)
        .await
        .unwrap()
        .iter()
        .map(|h| h.event)
        .collect();
    assert_eq!(events, vec![Event::Add, Event::Update]);

    // Metadata-only update keeps the vector.
    let mut third = revised(
        &got,
        &got.text,
        next.updated_at + SignedDuration::from_secs(1),
    );
    third.metadata = json!({"checked": true})
        .as_object()
        .cloned()
        .unwrap_or_default();
    f.store
        .apply(vec![update(&got, &third, None)])
        .await
        .unwrap();
    let hits = f
        .store
        .vector_search(&scope, vis(), &vector(3, 0.0), 1)
        .await
        .unwrap();
    assert!((hits.hits[0].1 - 1.0).abs() < 1e-4, "vector carried over");
}

/// An update written against a stale version is a conflict and changes nothing.
pub async fn stale_update_is_a_conflict(f: Fixture) {
    bound(&f).await;
    let a = memory("Ola likes jazz", user("ola"), 0);
    f.store
        .apply(vec![insert(&a, vector(0, 0.0))])
        .await
        .unwrap();
    let v2 = revised(
        &a,
        "Ola likes blues",
        a.updated_at + SignedDuration::from_secs(1),
    );
    f.store.apply(vec![update(&a, &v2, None)]).await.unwrap();
    // A second writer that also read version 1 tries to write version 2 again.
    let stale = revised(&a, "Ola likes opera", v2.updated_at);
    let err = f
        .store
        .apply(vec![update(&a, &stale, None)])
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Conflict);
    assert_eq!(
        f.store.get(a.id, vis()).await.unwrap().unwrap().text,
        "Ola likes blues"
    );
    assert_eq!(f.store.history(a.id).await.unwrap().len(), 2);
}

/// Delete hides a memory from every read but keeps its history.
pub async fn delete_hides_but_keeps_history(f: Fixture) {
    bound(&f).await;
    let a = memory("Alice is vegetarian", user("alice"), 0);
    f.store
        .apply(vec![insert(&a, vector(0, 0.0))])
        .await
        .unwrap();
    let at = a.created_at + SignedDuration::from_secs(5);
    let mut closed = a.clone();
    closed.updated_at = at;
    let h = history(&closed, Event::Delete, Some(&a.text), None);
    f.store
        .apply(vec![WriteOp::Delete {
            id: a.id,
            at,
            history: h.clone(),
        }])
        .await
        .unwrap();
    let scope = Filter::from_scope(&user("alice"));
    assert!(f.store.get(a.id, vis()).await.unwrap().is_none());
    assert!(
        f.store
            .list(&scope, vis(), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        f.store
            .vector_search(&scope, vis(), &vector(0, 0.0), 5)
            .await
            .unwrap()
            .hits
            .is_empty()
    );
    assert!(
        f.store
            .keyword_search(&scope, vis(), &["vegetarian".into()], 5)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(f.store.history(a.id).await.unwrap().len(), 2);
    // Deleting again is a not-found, and changes nothing.
    let err = f
        .store
        .apply(vec![WriteOp::Delete {
            id: a.id,
            at,
            history: h,
        }])
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
    assert_eq!(f.store.history(a.id).await.unwrap().len(), 2);
}

/// A batch is atomic: one failing op leaves nothing of the batch behind.
pub async fn batches_are_atomic(f: Fixture) {
    bound(&f).await;
    let a = memory("Carol plays chess", user("carol"), 0);
    let ghost = memory("never stored", user("carol"), 1);
    let h = history(&ghost, Event::Delete, None, None);
    let err = f
        .store
        .apply(vec![
            insert(&a, vector(0, 0.0)),
            WriteOp::Delete {
                id: ghost.id,
                at: t0(),
                history: h,
            },
        ])
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
    assert!(f.store.get(a.id, vis()).await.unwrap().is_none());
    assert!(f.store.history(a.id).await.unwrap().is_empty());
    let scope = Filter::from_scope(&user("carol"));
    assert!(
        f.store
            .vector_search(&scope, vis(), &vector(0, 0.0), 5)
            .await
            .unwrap()
            .hits
            .is_empty()
    );
    assert!(
        f.store
            .keyword_search(&scope, vis(), &["chess".into()], 5)
            .await
            .unwrap()
            .is_empty()
    );
}

/// No read ever returns a memory outside the filter's scope.
pub async fn reads_never_cross_scopes(f: Fixture) {
    bound(&f).await;
    let mut ops = Vec::new();
    let mut by_user: Vec<(String, MemoryId)> = Vec::new();
    for i in 0..60 {
        let u = format!("u{}", i % 3);
        let m = memory(
            &format!("Shared words about Lisbon trip number {i} with Friend{i}"),
            user(&u),
            i,
        );
        by_user.push((u, m.id));
        ops.push(insert(&m, vector(i as usize, 0.1 * (i % 5) as f32)));
    }
    f.store.apply(ops).await.unwrap();
    for u in ["u0", "u1", "u2"] {
        let mine: Vec<MemoryId> = by_user
            .iter()
            .filter(|(x, _)| x == u)
            .map(|(_, id)| *id)
            .collect();
        let scope = Filter::from_scope(&user(u));
        let v = f
            .store
            .vector_search(&scope, vis(), &vector(0, 0.0), 100)
            .await
            .unwrap();
        assert_eq!(v.hits.len(), 20);
        assert!(ids(&v.hits).iter().all(|id| mine.contains(id)));
        let k = f
            .store
            .keyword_search(&scope, vis(), &["lisbon".into()], 100)
            .await
            .unwrap();
        assert_eq!(k.len(), 20);
        assert!(ids(&k).iter().all(|id| mine.contains(id)));
        // Every memory has its own friend; asking for all of them reaches only this scope's.
        let friends: Vec<String> = (0..60).map(|i| format!("friend{i}")).collect();
        let e = f
            .store
            .entity_search(&scope, vis(), &friends, 100)
            .await
            .unwrap();
        assert_eq!(
            e.len(),
            20,
            "every memory of the scope mentions one of its friends"
        );
        assert!(ids(&e).iter().all(|id| mine.contains(id)));
        let l = f.store.list(&scope, vis(), None, 100).await.unwrap();
        assert_eq!(l.len(), 20);
        assert!(l.iter().all(|m| mine.contains(&m.id)));
    }
    let nobody = Filter::from_scope(&user("nobody"));
    let v = f
        .store
        .vector_search(&nobody, vis(), &vector(0, 0.0), 10)
        .await
        .unwrap();
    assert!(v.hits.is_empty());
    assert_eq!(v.path, VectorPath::Empty);
}

/// Listing is newest first and the cursor walks every memory exactly once.
pub async fn list_paginates_newest_first(f: Fixture) {
    bound(&f).await;
    let mut all = Vec::new();
    for i in 0..25 {
        let m = memory(&format!("fact {i}"), user("dana"), i * 10);
        all.push(m.id);
        f.store
            .apply(vec![insert(&m, vector(i as usize, 0.0))])
            .await
            .unwrap();
    }
    all.reverse();
    let scope = Filter::from_scope(&user("dana"));
    let mut seen = Vec::new();
    let mut cursor: Option<Cursor> = None;
    loop {
        let page = f.store.list(&scope, vis(), cursor, 7).await.unwrap();
        if page.is_empty() {
            break;
        }
        cursor = page.last().map(Cursor::of);
        seen.extend(page.into_iter().map(|m| m.id));
    }
    assert_eq!(seen, all);
}

/// Filters on metadata, categories, kind, dates and boolean structure apply to every read.
pub async fn filters_apply_to_reads(f: Fixture) {
    bound(&f).await;
    let mut a = memory("Lisbon apartment", user("erin"), 0);
    a.metadata = json!({"city": "Lisbon", "rooms": 2})
        .as_object()
        .cloned()
        .unwrap_or_default();
    a.categories = vec!["home".into()];
    let mut b = memory("Porto apartment", user("erin"), 100);
    b.metadata = json!({"city": "Porto", "rooms": 4})
        .as_object()
        .cloned()
        .unwrap_or_default();
    b.kind = MemoryKind::Episodic;
    let c = memory("Lisbon apartment for someone else", user("frank"), 50);
    f.store
        .apply(vec![
            insert(&a, vector(0, 0.0)),
            insert(&b, vector(0, 0.2)),
            insert(&c, vector(0, 0.1)),
        ])
        .await
        .unwrap();
    let parse = |v: serde_json::Value| filter::Filter::parse(&v).unwrap();
    let cases = [
        (
            json!({"user_id": "erin", "metadata": {"city": "Lisbon"}}),
            vec![a.id],
        ),
        (
            json!({"user_id": "erin", "metadata": {"rooms": {"gt": 3}}}),
            vec![b.id],
        ),
        (
            json!({"user_id": "erin", "categories": {"contains": "home"}}),
            vec![a.id],
        ),
        (json!({"user_id": "erin", "kind": "episodic"}), vec![b.id]),
        (
            json!({"AND": [{"user_id": "erin"}, {"created_at": {"gte": (t0() + SignedDuration::from_secs(50)).to_string()}}]}),
            vec![b.id],
        ),
        (
            json!({"OR": [{"user_id": "frank"}, {"AND": [{"user_id": "erin"}, {"NOT": {"kind": "episodic"}}]}]}),
            vec![a.id, c.id],
        ),
        (
            json!({"user_id": {"in": ["erin", "frank"]}, "metadata": {"city": {"ne": "Porto"}}}),
            vec![a.id, c.id],
        ),
    ];
    for (json_filter, mut want) in cases {
        let filter = parse(json_filter.clone());
        want.sort();
        let mut listed: Vec<MemoryId> = f
            .store
            .list(&filter, vis(), None, 10)
            .await
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect();
        listed.sort();
        assert_eq!(listed, want, "list {json_filter}");
        let mut found = ids(&f
            .store
            .vector_search(&filter, vis(), &vector(0, 0.0), 10)
            .await
            .unwrap()
            .hits);
        found.sort();
        assert_eq!(found, want, "vector {json_filter}");
        let mut kw = ids(&f
            .store
            .keyword_search(&filter, vis(), &["apartment".into()], 10)
            .await
            .unwrap());
        kw.sort();
        assert_eq!(kw, want, "keyword {json_filter}");
    }
}

/// Expired memories are invisible at read time.
pub async fn expired_memories_are_invisible(f: Fixture) {
    bound(&f).await;
    let mut a = memory("temporary session note", user("gus"), 0);
    a.expires_at = Some(t0() + SignedDuration::from_mins(30));
    let b = memory("permanent note", user("gus"), 1);
    f.store
        .apply(vec![insert(&a, vector(0, 0.0)), insert(&b, vector(1, 0.0))])
        .await
        .unwrap();
    let before = Visibility {
        now: t0() + SignedDuration::from_mins(10),
    };
    let after = Visibility {
        now: t0() + SignedDuration::from_mins(31),
    };
    let scope = Filter::from_scope(&user("gus"));
    assert!(f.store.get(a.id, before).await.unwrap().is_some());
    assert!(f.store.get(a.id, after).await.unwrap().is_none());
    assert_eq!(
        f.store.list(&scope, after, None, 10).await.unwrap().len(),
        1
    );
    assert_eq!(
        ids(&f
            .store
            .vector_search(&scope, after, &vector(0, 0.0), 10)
            .await
            .unwrap()
            .hits),
        vec![b.id]
    );
    assert!(
        f.store
            .keyword_search(&scope, after, &["temporary".into()], 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// BM25 ranks the better keyword match first; entity search weights rare entities.
pub async fn keyword_and_entity_ranking(f: Fixture) {
    bound(&f).await;
    let a = memory(
        "Caroline went to the Pride parade in Stockholm",
        user("h"),
        0,
    );
    let b = memory("Caroline talked about painting", user("h"), 1);
    let c = memory("Melanie baked bread", user("h"), 2);
    f.store
        .apply(vec![
            insert(&a, vector(0, 0.0)),
            insert(&b, vector(1, 0.0)),
            insert(&c, vector(2, 0.0)),
        ])
        .await
        .unwrap();
    let scope = Filter::from_scope(&user("h"));
    let kw = f
        .store
        .keyword_search(&scope, vis(), &["pride".into(), "parade".into()], 10)
        .await
        .unwrap();
    assert_eq!(ids(&kw), vec![a.id]);
    assert!(kw[0].1 > 0.0);
    // Stemming: "painted" matches "painting".
    assert_eq!(
        ids(&f
            .store
            .keyword_search(&scope, vis(), &["painted".into()], 10)
            .await
            .unwrap()),
        vec![b.id]
    );
    let ent = f
        .store
        .entity_search(&scope, vis(), &["stockholm".into()], 10)
        .await
        .unwrap();
    assert_eq!(ids(&ent), vec![a.id]);
    assert!(ent[0].1 > 0.0 && ent[0].1 <= 1.0);

    // Cosine for given memories: the fill-in fusion uses.
    let vs = f
        .store
        .vector_scores(&[c.id, a.id], &vector(2, 0.0))
        .await
        .unwrap();
    assert_eq!(ids(&vs), vec![c.id, a.id]);
    assert!((vs[0].1 - 1.0).abs() < 1e-4 && vs[1].1.abs() < 1e-4);
}

/// Neighbours are the turns just before and after in the same scope, within the time window.
pub async fn neighbors_are_adjacent_turns_of_the_same_scope(f: Fixture) {
    bound(&f).await;
    let a = memory("first turn", user("nia"), 0);
    let b = memory("second turn", user("nia"), 10);
    let other = memory("someone else, in between", user("zed"), 15);
    let mut wider = memory("same user, with an agent", user("nia"), 16);
    wider.scope.agent_id = Some("bot".into());
    let c = memory("third turn", user("nia"), 20);
    let d = memory("next day", user("nia"), 86_400);
    let ops = [&a, &b, &other, &wider, &c, &d]
        .iter()
        .enumerate()
        .map(|(i, m)| insert(m, vector(i, 0.0)))
        .collect();
    f.store.apply(ops).await.unwrap();
    let window = 1_800_000;
    let got = f
        .store
        .neighbors(&[b.id, c.id, a.id, other.id], &Filter::all(), window, vis())
        .await
        .unwrap();
    assert_eq!(got[0], (b.id, vec![a.id, c.id]));
    assert_eq!(
        got[1],
        (c.id, vec![b.id]),
        "the next day is outside the window; other scopes never count"
    );
    assert_eq!(got[2], (a.id, vec![b.id]));
    assert_eq!(got[3], (other.id, vec![]));
    assert_eq!(
        f.store
            .neighbors(&[d.id], &Filter::all(), 100 * window, vis())
            .await
            .unwrap()[0],
        (d.id, vec![c.id])
    );
    // Neighbours must pass the rest of the filter too.
    let only_first = filter::Filter::parse(&json!({"keywords": {"contains": "first"}})).unwrap();
    assert_eq!(
        f.store
            .neighbors(&[b.id], &only_first, window, vis())
            .await
            .unwrap()[0],
        (b.id, vec![a.id])
    );
}

/// Expands to one `#[tokio::test]` per suite case, each given a fresh fixture from `$factory().await`.
/// Counting and listing scope ids see exactly the visible memories a filter matches.
pub async fn counts_and_scope_ids(f: Fixture) {
    use engram_core::memory::ScopeField;
    bound(&f).await;
    let with_agent = |u: &str| Scope {
        agent_id: Some("coach".into()),
        ..user(u)
    };
    let a1 = memory("Ann swims", with_agent("ann"), 10);
    let a2 = memory("Ann runs", user("ann"), 20);
    let b1 = memory("Ben cycles", with_agent("ben"), 30);
    let gone = memory("Ben rows", user("ben"), 40);
    let mut expired = memory("Ann rowed once", user("ann"), 50);
    expired.expires_at = Some(t0());
    let ops = [&a1, &a2, &b1, &gone, &expired]
        .iter()
        .enumerate()
        .map(|(i, m)| insert(m, vector(i, 0.1)))
        .collect();
    f.store.apply(ops).await.unwrap();
    f.store
        .apply(vec![WriteOp::Delete {
            id: gone.id,
            at: t0() + SignedDuration::from_secs(41),
            history: history(&gone, Event::Delete, Some("Ben rows"), None),
        }])
        .await
        .unwrap();
    let all = Filter::all();
    assert_eq!(
        f.store.count(&all, vis()).await.unwrap(),
        3,
        "deleted and expired do not count"
    );
    let ann = Filter::from_scope(&user("ann"));
    assert_eq!(f.store.count(&ann, vis()).await.unwrap(), 2);
    let ids = f.store.scope_ids(&all, vis()).await.unwrap();
    let got: Vec<(ScopeField, &str, usize)> = ids
        .iter()
        .map(|s| (s.field, s.id.as_str(), s.memories))
        .collect();
    assert_eq!(
        got,
        vec![
            (ScopeField::User, "ann", 2),
            (ScopeField::User, "ben", 1),
            (ScopeField::Agent, "coach", 2),
        ]
    );
    let ann_ids = f.store.scope_ids(&ann, vis()).await.unwrap();
    let ann_user = ann_ids
        .iter()
        .find(|s| s.field == ScopeField::User)
        .unwrap();
    assert_eq!(
        (ann_user.first, ann_user.last),
        (a1.created_at, a2.created_at)
    );
    assert!(ann_ids.iter().all(|s| s.id != "ben"), "the filter applies");
}

/// Jobs: one lease at a time, completion atomic with the job's writes and
/// only under the lease, retries, lease expiry, the dead-letter state.
pub async fn jobs_lease_finish_retry_and_dead_letter(f: Fixture) {
    use engram_core::access::Principal;
    use engram_core::ports::{Job, JobState};
    use std::time::Duration;
    bound(&f).await;
    let at = |s: i64| t0() + SignedDuration::from_secs(s);
    let lease = Duration::from_secs(60);
    let job = |n: i64| Job {
        id: uuid::Uuid::now_v7(),
        kind: "add".into(),
        state: JobState::Queued,
        payload: json!({"n": n}),
        principal: Principal::operator(),
        scope: user("ann"),
        request_id: Some(format!("req-{n}")),
        attempts: 0,
        max_attempts: 3,
        last_error: None,
        result: None,
        created_at: at(n),
        updated_at: at(n),
        run_after: at(n),
        lease_owner: None,
        lease_until: None,
    };
    let j1 = job(1);
    f.store.job_insert(&j1).await.unwrap();
    assert_eq!(f.store.job_get(j1.id).await.unwrap().unwrap(), j1);
    let claimed = f
        .store
        .job_claim("w1", at(2), lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (claimed.id, claimed.state, claimed.attempts),
        (j1.id, JobState::Running, 1)
    );
    assert_eq!(claimed.lease_owner.as_deref(), Some("w1"));
    assert!(
        f.store
            .job_claim("w2", at(3), lease)
            .await
            .unwrap()
            .is_none(),
        "leased to w1"
    );

    // A worker without the lease cannot finish it, and nothing of its batch lands.
    let m = memory("Ann owns a kayak", user("ann"), 5);
    let finish = |w: &str, t: i64| WriteOp::FinishJob {
        id: j1.id,
        worker: w.into(),
        result: json!({"ok": w}),
        at: at(t),
    };
    let e = f
        .store
        .apply(vec![insert(&m, vector(1, 0.0)), finish("w2", 6)])
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict);
    assert!(
        f.store.get(m.id, vis()).await.unwrap().is_none(),
        "rolled back"
    );
    f.store
        .apply(vec![insert(&m, vector(1, 0.0)), finish("w1", 7)])
        .await
        .unwrap();
    let done = f.store.job_get(j1.id).await.unwrap().unwrap();
    assert_eq!(
        (done.state, done.result),
        (JobState::Done, Some(json!({"ok": "w1"})))
    );
    assert!(f.store.get(m.id, vis()).await.unwrap().is_some());
    let e = f.store.apply(vec![finish("w1", 8)]).await.unwrap_err();
    assert_eq!(
        e.code,
        ErrorCode::Conflict,
        "a done job cannot finish twice"
    );

    // Failure with a retry time, then lease expiry hands the job to another worker.
    let j2 = job(10);
    f.store.job_insert(&j2).await.unwrap();
    let c = f
        .store
        .job_claim("w1", at(10), lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.id, j2.id);
    assert!(
        f.store
            .job_fail(j2.id, "w1", "llm down", Some(at(30)), at(11))
            .await
            .unwrap()
    );
    let q = f.store.job_get(j2.id).await.unwrap().unwrap();
    assert_eq!(
        (q.state, q.last_error.as_deref(), q.run_after),
        (JobState::Queued, Some("llm down"), at(30))
    );
    assert!(
        f.store
            .job_claim("w2", at(20), lease)
            .await
            .unwrap()
            .is_none(),
        "not due yet"
    );
    let c = f
        .store
        .job_claim("w2", at(30), lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.attempts, 2);
    // w2 dies; after its lease, w3 takes over and w2 can no longer report.
    let c = f
        .store
        .job_claim("w3", at(91), lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (c.id, c.attempts, c.lease_owner.as_deref()),
        (j2.id, 3, Some("w3"))
    );
    assert!(
        !f.store
            .job_fail(j2.id, "w2", "late", None, at(92))
            .await
            .unwrap()
    );
    // Dead letter, counted and listed; retry re-queues it with its attempts reset.
    assert!(
        f.store
            .job_fail(j2.id, "w3", "gave up", None, at(93))
            .await
            .unwrap()
    );
    let counts = f.store.job_counts().await.unwrap();
    assert_eq!(
        (counts.done, counts.dead, counts.queued, counts.running),
        (1, 1, 0, 0)
    );
    let dead = f.store.job_list(Some(JobState::Dead), 10).await.unwrap();
    assert_eq!(dead.iter().map(|j| j.id).collect::<Vec<_>>(), vec![j2.id]);
    assert_eq!(f.store.job_list(None, 10).await.unwrap().len(), 2);
    assert!(f.store.job_requeue(j2.id, at(100)).await.unwrap());
    assert!(
        !f.store.job_requeue(j2.id, at(100)).await.unwrap(),
        "only dead jobs"
    );
    let r = f.store.job_get(j2.id).await.unwrap().unwrap();
    assert_eq!(
        (r.state, r.attempts, r.run_after),
        (JobState::Queued, 0, at(100))
    );
}

/// `versions_at`: the version current at a time, with its vector; deleted
/// memories before their deletion; nothing before creation.
pub async fn versions_as_they_stood(f: Fixture) {
    bound(&f).await;
    let at = |s: i64| t0() + SignedDuration::from_secs(s);
    let m = memory("Bo lives in Oslo", user("bo"), 10);
    let gone = memory("Bo has a boat", user("bo"), 10);
    let other = memory("Cy lives in Rome", user("cy"), 10);
    f.store
        .apply(vec![
            insert(&m, vector(0, 0.0)),
            insert(&gone, vector(1, 0.0)),
            insert(&other, vector(2, 0.0)),
        ])
        .await
        .unwrap();
    let v2 = revised(&m, "Bo lives in Bergen", at(20));
    f.store
        .apply(vec![
            update(&m, &v2, Some(vector(3, 0.0))),
            WriteOp::Delete {
                id: gone.id,
                at: at(20),
                history: history(&gone, Event::Delete, Some("Bo has a boat"), None),
            },
        ])
        .await
        .unwrap();
    let bo = Filter::from_scope(&user("bo"));
    let texts = |v: Vec<(Memory, Vec<f32>)>| {
        let mut t: Vec<(String, Vec<f32>)> = v.into_iter().map(|(m, v)| (m.text, v)).collect();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    };
    assert_eq!(
        texts(f.store.versions_at(&bo, at(15)).await.unwrap()),
        vec![
            ("Bo has a boat".to_owned(), vector(1, 0.0)),
            ("Bo lives in Oslo".to_owned(), vector(0, 0.0))
        ]
    );
    assert_eq!(
        texts(f.store.versions_at(&bo, at(25)).await.unwrap()),
        vec![("Bo lives in Bergen".to_owned(), vector(3, 0.0))]
    );
    assert!(f.store.versions_at(&bo, at(5)).await.unwrap().is_empty());
}

/// LLM usage rows add up per scope, day and model.
pub async fn llm_usage_is_tallied(f: Fixture) {
    use engram_core::ports::UsageRow;
    bound(&f).await;
    let row = |who: &str, day: &str, p: u64| UsageRow {
        scope: Scope {
            org_id: Some("acme".into()),
            ..user(who)
        },
        day: day.into(),
        model: "m".into(),
        runs: 1,
        prompt_tokens: p,
        completion_tokens: 2,
        cost_microdollars: 5,
    };
    f.store
        .apply(vec![
            WriteOp::RecordUsage(row("ann", "2026-01-01", 10)),
            WriteOp::RecordUsage(row("ann", "2026-01-01", 20)),
            WriteOp::RecordUsage(row("ann", "2026-01-02", 7)),
            WriteOp::RecordUsage(row("ben", "2026-01-01", 1)),
        ])
        .await
        .unwrap();
    let rows = f.store.usage(10).await.unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].day, "2026-01-02", "newest day first");
    let ann1 = rows
        .iter()
        .find(|r| r.day == "2026-01-01" && r.scope.user_id.as_deref() == Some("ann"))
        .unwrap();
    assert_eq!(
        (
            ann1.runs,
            ann1.prompt_tokens,
            ann1.completion_tokens,
            ann1.cost_microdollars
        ),
        (2, 30, 4, 10)
    );
    assert_eq!(ann1.scope.org_id.as_deref(), Some("acme"));
    assert_eq!(ann1.scope.agent_id, None);
}

/// API keys: stored with their binding, found by id, listed, revoked once.
pub async fn keys_round_trip(f: Fixture) {
    use engram_core::access::Role;
    use engram_core::ports::{ApiKey, KeyStore};
    let keys: Arc<dyn KeyStore> = f.store.clone();
    let key = |id: &str, org: &str, user: Option<&str>, at: i64| ApiKey {
        id: id.into(),
        name: format!("key {id}"),
        role: Role::ReadOnly,
        binding: Scope {
            org_id: Some(org.into()),
            user_id: user.map(Into::into),
            ..Default::default()
        },
        rate_limit: Some(120),
        created_at: t0() + SignedDuration::from_secs(at),
        created_by: "cli".into(),
        revoked_at: None,
    };
    let a = key("00000000000000aa", "acme", Some("alice"), 1);
    let b = ApiKey {
        role: Role::Admin,
        rate_limit: None,
        ..key("00000000000000bb", "globex", None, 2)
    };
    let ev = |action: &str, k: &ApiKey| {
        engram_core::ports::AuditEvent::new(
            k.created_at,
            "cli".into(),
            action,
            k.binding.org_id.clone(),
            Some(k.id.clone()),
            None,
        )
    };
    keys.key_insert(&a, "hash-a", &ev("key.create", &a))
        .await
        .unwrap();
    keys.key_insert(&b, "hash-b", &ev("key.create", &b))
        .await
        .unwrap();
    assert!(
        keys.key_insert(&a, "again", &ev("key.create", &a))
            .await
            .is_err(),
        "a duplicate id is refused"
    );
    assert_eq!(
        keys.key_get(&a.id).await.unwrap(),
        Some((a.clone(), "hash-a".to_owned()))
    );
    assert_eq!(keys.key_get("00000000000000cc").await.unwrap(), None);
    assert_eq!(keys.key_list().await.unwrap(), vec![a.clone(), b.clone()]);
    let at = t0() + SignedDuration::from_secs(10);
    assert!(
        keys.key_revoke(&a.id, at, &ev("key.revoke", &a))
            .await
            .unwrap()
    );
    assert!(
        !keys
            .key_revoke(&a.id, at, &ev("key.revoke", &a))
            .await
            .unwrap(),
        "revoked once"
    );
    assert!(
        !keys
            .key_revoke("00000000000000cc", at, &ev("key.revoke", &b))
            .await
            .unwrap()
    );
    // Creations and the one revocation were audited; the refused ones were not.
    let audit = f
        .store
        .audit_list(&engram_core::ports::AuditQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let actions: Vec<(&str, Option<&str>)> = audit
        .iter()
        .map(|(_, e)| (e.action.as_str(), e.target.as_deref()))
        .collect();
    assert_eq!(
        actions,
        vec![
            ("key.create", Some(a.id.as_str())),
            ("key.create", Some(b.id.as_str())),
            ("key.revoke", Some(a.id.as_str())),
        ]
    );
    let (revoked, _) = keys.key_get(&a.id).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(at));
    assert_eq!(
        keys.key_get(&b.id).await.unwrap().unwrap().0.revoked_at,
        None
    );
}

/// Every memory write is audited in its own transaction (who, what, which
/// memory, request id, no text); explicit events append; listing filters by
/// org, action and position; the log refuses changes.
pub async fn audit_records_writes(f: Fixture) {
    use engram_core::ports::{AuditEvent, AuditQuery};
    bound(&f).await;
    let mut a = memory("Ann's secret: she plays the tuba", user("ann"), 1);
    a.scope.org_id = Some("acme".into());
    let mut b = memory("Bob likes tea", user("bob"), 2);
    b.scope.org_id = Some("globex".into());
    f.store
        .apply(vec![insert(&a, vector(0, 0.0)), insert(&b, vector(1, 0.0))])
        .await
        .unwrap();
    let at = a.created_at + SignedDuration::from_secs(5);
    f.store
        .apply(vec![WriteOp::Delete {
            id: a.id,
            at,
            history: history(&a, Event::Delete, Some(&a.text), None),
        }])
        .await
        .unwrap();
    let mut retry = AuditEvent::new(
        at,
        "key:00000000000000aa".into(),
        "job.retry",
        Some("acme".into()),
        Some("job-1".into()),
        Some("req-9".into()),
    );
    retry.detail = json!({"attempt": 2});
    f.store
        .apply(vec![WriteOp::Audit(retry.clone())])
        .await
        .unwrap();

    let q = |org: Option<&str>, action: Option<&str>, after: Option<i64>| AuditQuery {
        org_id: org.map(Into::into),
        action: action.map(Into::into),
        after,
        limit: 100,
        ..Default::default()
    };
    let all = f.store.audit_list(&q(None, None, None)).await.unwrap();
    let actions: Vec<&str> = all.iter().map(|(_, e)| e.action.as_str()).collect();
    assert_eq!(
        actions,
        vec!["memory.add", "memory.add", "memory.delete", "job.retry"]
    );
    assert!(
        all.windows(2).all(|w| w[0].0 < w[1].0),
        "positions increase"
    );
    let add = &all[0].1;
    assert_eq!(add.target.as_deref(), Some(a.id.to_string().as_str()));
    assert_eq!(
        (add.actor.as_str(), add.request_id.as_deref()),
        ("suite", Some("req-1"))
    );
    assert_eq!(add.org_id.as_deref(), Some("acme"));
    assert_eq!(all[3].1, retry);
    let text = serde_json::to_string(&all.iter().map(|(_, e)| e).collect::<Vec<_>>()).unwrap();
    assert!(
        !text.contains("tuba") && !text.contains("ann"),
        "no text, no user ids: {text}"
    );

    let acme = f
        .store
        .audit_list(&q(Some("acme"), None, None))
        .await
        .unwrap();
    assert_eq!(acme.len(), 3, "globex's add is not acme's");
    let deletes = f
        .store
        .audit_list(&q(None, Some("memory.delete"), None))
        .await
        .unwrap();
    assert_eq!(deletes.len(), 1);
    let page2 = f
        .store
        .audit_list(&q(None, None, Some(all[1].0)))
        .await
        .unwrap();
    assert_eq!(page2.len(), 2, "after a position");
}

/// A sliding expiry round-trips; `SetExpiry` moves an expiry in place (no
/// version, no history) and ignores unknown ids; the sweep removes exactly
/// the memories expired by its `now` — every version, history row and index
/// entry — in batches of `limit`, audited with counts only when it removed
/// something.
pub async fn expiry_moves_and_sweep_removes_everything(f: Fixture) {
    use engram_core::ports::{AuditEvent, AuditQuery};
    bound(&f).await;
    let at = |mins: i64| t0() + SignedDuration::from_mins(mins);
    let mut a = memory("Gus is staying at the Hotel Lisboa", user("gus"), 0);
    a.idle_ttl = Some(SignedDuration::from_hours(1));
    a.expires_at = Some(at(60));
    let mut b = memory("Gus has a dentist appointment on Friday", user("gus"), 1);
    b.expires_at = Some(at(120));
    let c = memory("Gus speaks Portuguese", user("gus"), 2);
    f.store
        .apply(vec![
            insert(&a, vector(0, 0.0)),
            insert(&b, vector(1, 0.0)),
            insert(&c, vector(2, 0.0)),
        ])
        .await
        .unwrap();
    let a2 = revised(&a, "Gus is staying at the Hotel Lisboa until Sunday", at(5));
    f.store
        .apply(vec![update(&a, &a2, Some(vector(0, 0.1)))])
        .await
        .unwrap();
    let seen = |mins: i64| Visibility { now: at(mins) };
    let got = f.store.get(a.id, seen(10)).await.unwrap().unwrap();
    assert_eq!(got.idle_ttl, Some(SignedDuration::from_hours(1)));
    assert_eq!(got.expires_at, Some(at(60)));

    // Used at minute 50 (say with a 100-minute TTL): moved to 150, in place.
    // Stale moves (an older version, an expiry that changed meanwhile, an
    // unknown id) do nothing.
    let set = |id, version, from: i64, to: i64| WriteOp::SetExpiry {
        id,
        version,
        from: Some(at(from)),
        to: Some(at(to)),
    };
    f.store
        .apply(vec![
            set(a.id, 1, 60, 500),
            set(a.id, 2, 61, 500),
            set(a.id, 2, 60, 150),
            set(a.id, 2, 60, 700),
            set(uuid::Uuid::now_v7(), 1, 60, 1),
        ])
        .await
        .unwrap();
    let got = f.store.get(a.id, seen(100)).await.unwrap().unwrap();
    assert_eq!((got.version, got.expires_at), (2, Some(at(150))));
    assert_eq!(
        f.store.history(a.id).await.unwrap().len(),
        2,
        "no history row"
    );
    let scope = Filter::from_scope(&user("gus"));
    let live = |mins: i64| {
        let scope = scope.clone();
        let store = f.store.clone();
        async move {
            let mut v: Vec<MemoryId> = store
                .vector_search(&scope, seen(mins), &vector(0, 0.0), 10)
                .await
                .unwrap()
                .hits
                .iter()
                .map(|(id, _)| *id)
                .collect();
            v.sort();
            v
        }
    };
    let mut abc = vec![a.id, b.id, c.id];
    abc.sort();
    assert_eq!(live(100).await, abc);
    let mut ac = vec![a.id, c.id];
    ac.sort();
    assert_eq!(live(121).await, ac, "b expired at minute 120");

    let keys = engram_core::memory::entity_keys(&a2.entities);
    assert!(!keys.is_empty(), "{:?}", a2.entities);
    let found = |hits: Vec<(MemoryId, f32)>| hits.iter().any(|(id, _)| *id == a.id);
    assert!(found(
        f.store
            .keyword_search(&scope, seen(100), &["lisboa".into()], 10)
            .await
            .unwrap()
    ));
    assert!(found(
        f.store
            .entity_search(&scope, seen(100), &keys, 10)
            .await
            .unwrap()
    ));

    let audit = || AuditEvent::new(at(0), "system".into(), "memory.sweep", None, None, None);
    // At minute 121 only b has expired.
    let swept = f.store.sweep_expired(at(121), 10, audit()).await.unwrap();
    assert_eq!(
        (swept.memories, swept.versions, swept.history_events),
        (1, 1, 1)
    );
    assert!(f.store.history(b.id).await.unwrap().is_empty());
    assert!(
        f.store.get(b.id, seen(0)).await.unwrap().is_none(),
        "gone, not hidden"
    );
    // At minute 200 a has too: limit 1 takes it (both versions), then nothing is left.
    let swept = f.store.sweep_expired(at(200), 1, audit()).await.unwrap();
    assert_eq!(
        (swept.memories, swept.versions, swept.history_events),
        (1, 2, 2)
    );
    assert_eq!(swept.keyword_index_entries, 1);
    assert!(f.store.history(a.id).await.unwrap().is_empty());
    assert!(f.store.get(a.id, seen(0)).await.unwrap().is_none());
    assert!(
        f.store
            .keyword_search(&scope, seen(0), &["lisboa".into()], 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(!found(
        f.store
            .entity_search(&scope, seen(0), &keys, 10)
            .await
            .unwrap()
    ));
    assert_eq!(
        live(0).await,
        vec![c.id],
        "only the memory without expiry is left"
    );
    let none = f
        .store
        .sweep_expired(at(10_000), 10, audit())
        .await
        .unwrap();
    assert_eq!(none.memories, 0);

    let sweeps = f
        .store
        .audit_list(&AuditQuery {
            action: Some("memory.sweep".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let removed: Vec<u64> = sweeps
        .iter()
        .map(|(_, e)| e.detail["memories"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(
        removed,
        vec![1, 1],
        "one event per sweep that removed something"
    );
    let text = serde_json::to_string(&sweeps.iter().map(|(_, e)| e).collect::<Vec<_>>()).unwrap();
    assert!(!text.contains("Lisboa") && !text.contains("gus"), "{text}");
}

/// `Import` writes a memory exactly as exported — superseded versions closed
/// and out of the indexes, the current one indexed, history as it was — and
/// does nothing when the id is already known; `memory_versions` reads every
/// version back with its vector.
pub async fn import_writes_a_memory_once(f: Fixture) {
    bound(&f).await;
    let mut v1 = memory("Hana drives a blue Fiat", user("hana"), 0);
    let mut v2 = v1.clone();
    v2.version = 2;
    v2.text = "Hana drives a red Tesla".into();
    v2.entities = engram_core::text::tag_entities(&v2.text);
    v2.updated_at = v1.created_at + SignedDuration::from_secs(60);
    v1.invalid_at = Some(v2.updated_at);
    let h = vec![
        history(&v1, Event::Add, None, Some(&v1.text)),
        history(&v2, Event::Update, Some(&v1.text), Some(&v2.text)),
    ];
    let import = |versions: Vec<(Memory, Vec<f32>)>| WriteOp::Import {
        versions,
        history: h.clone(),
    };
    f.store
        .apply(vec![import(vec![
            (v1.clone(), vector(0, 0.0)),
            (v2.clone(), vector(0, 0.3)),
        ])])
        .await
        .unwrap();
    let got = f.store.get(v1.id, vis()).await.unwrap().unwrap();
    assert_eq!(
        (got.version, got.text.as_str()),
        (2, "Hana drives a red Tesla")
    );
    let all = f.store.memory_versions(&[v1.id]).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].0, v1);
    assert_eq!(all[1].0, v2);
    assert!(
        all[1]
            .1
            .iter()
            .zip(vector(0, 0.3))
            .all(|(a, b)| (a - b).abs() < 1e-6)
    );
    assert_eq!(f.store.history(v1.id).await.unwrap(), h);
    let scope = Filter::from_scope(&user("hana"));
    let kw = |t: &str| {
        let (store, scope) = (f.store.clone(), scope.clone());
        let t = t.to_owned();
        async move { store.keyword_search(&scope, vis(), &[t], 10).await.unwrap() }
    };
    assert_eq!(ids(&kw("tesla").await), vec![v1.id]);
    assert!(
        kw("fiat").await.is_empty(),
        "superseded text is not indexed"
    );
    let hits = f
        .store
        .vector_search(&scope, vis(), &vector(0, 0.3), 10)
        .await
        .unwrap();
    assert_eq!(
        ids(&hits.hits),
        vec![v1.id],
        "one current version in the vector index"
    );

    // Again, and with other content under the same id: nothing changes.
    let mut other = v2.clone();
    other.version = 1;
    other.invalid_at = None;
    other.text = "Hana walks everywhere".into();
    f.store
        .apply(vec![
            import(vec![
                (v1.clone(), vector(0, 0.0)),
                (v2.clone(), vector(0, 0.3)),
            ]),
            import(vec![(other, vector(1, 0.0))]),
        ])
        .await
        .unwrap();
    assert_eq!(f.store.memory_versions(&[v1.id]).await.unwrap().len(), 2);
    assert_eq!(f.store.history(v1.id).await.unwrap().len(), 2);
    assert_eq!(
        f.store.get(v1.id, vis()).await.unwrap().unwrap().text,
        v2.text
    );
    assert!(
        f.store
            .memory_versions(&[uuid::Uuid::now_v7()])
            .await
            .unwrap()
            .is_empty()
    );
}

/// Erasure removes every record of one user — every version, history, jobs,
/// usage, keys bound to them, idempotency records of the org's callers — and
/// nothing of anyone else; it is audited with counts and without the id.
pub async fn erasure_removes_every_trace(f: Fixture) {
    use engram_core::memory::ScopeField;
    use engram_core::ports::{AuditEvent, AuditQuery, ErasureTarget};
    use engram_core::ports::{IdemBegin, StoredResponse};
    bound(&f).await;
    let org = |mut s: Scope| {
        s.org_id = Some("acme".into());
        s
    };
    let a1 = memory("Erin was diagnosed with asthma", org(user("erin")), 1);
    let a2 = memory("Erin lives on Rua Augusta 12", org(user("erin")), 2);
    let keep = memory("Frank lives in Porto", org(user("frank")), 3);
    let mut other_org = memory("Erin at globex is someone else", user("erin"), 4);
    other_org.scope.org_id = Some("globex".into());
    f.store
        .apply(vec![
            insert(&a1, vector(0, 0.0)),
            insert(&a2, vector(1, 0.0)),
            insert(&keep, vector(2, 0.0)),
            insert(&other_org, vector(3, 0.0)),
        ])
        .await
        .unwrap();
    // A superseded version.
    let v2 = revised(
        &a1,
        "Erin has severe asthma",
        a1.created_at + SignedDuration::from_secs(10),
    );
    f.store
        .apply(vec![update(&a1, &v2, Some(vector(0, 0.2)))])
        .await
        .unwrap();
    // A dead job and a queued one about erin, one about frank.
    let job = |scope: Scope, text: &str| engram_core::ports::Job {
        id: uuid::Uuid::now_v7(),
        kind: "add".into(),
        state: engram_core::ports::JobState::Queued,
        payload: json!({"content": {"text": text}}),
        principal: engram_core::access::Principal::operator(),
        scope,
        request_id: None,
        attempts: 0,
        max_attempts: 3,
        last_error: None,
        result: None,
        created_at: t0(),
        updated_at: t0(),
        run_after: t0(),
        lease_owner: None,
        lease_until: None,
    };
    let erin_job = job(org(user("erin")), "Erin's blood type is O-");
    let frank_job = job(org(user("frank")), "Frank's cat");
    f.store.job_insert(&erin_job).await.unwrap();
    f.store.job_insert(&frank_job).await.unwrap();
    // Keys of acme: an admin's, and erin's own app key (which names her).
    let key = |id: &str, user: Option<&str>| engram_core::ports::ApiKey {
        id: id.into(),
        name: "k".into(),
        role: engram_core::access::Role::Admin,
        binding: Scope {
            org_id: Some("acme".into()),
            user_id: user.map(Into::into),
            ..Default::default()
        },
        rate_limit: None,
        created_at: t0(),
        created_by: "cli".into(),
        revoked_at: None,
    };
    for k in [
        key("00000000000000aa", None),
        key("00000000000000ee", Some("erin")),
    ] {
        let ev = AuditEvent::new(
            t0(),
            "cli".into(),
            "key.create",
            Some("acme".into()),
            Some(k.id.clone()),
            None,
        );
        f.store.key_insert(&k, "h", &ev).await.unwrap();
    }
    // An idempotency record of an acme key, quoting erin's memory.
    assert_eq!(
        f.store
            .idem_begin("key:00000000000000aa", "k1", "h", t0())
            .await
            .unwrap(),
        IdemBegin::New
    );
    f.store
        .idem_complete(
            "key:00000000000000aa",
            "k1",
            &StoredResponse {
                status: 200,
                content_type: "application/json".into(),
                body: a2.text.as_bytes().to_vec(),
            },
        )
        .await
        .unwrap();

    let target = ErasureTarget {
        field: ScopeField::User,
        id: "erin".into(),
        org_id: Some("acme".into()),
    };
    let audit = AuditEvent::new(
        t0(),
        "key:00000000000000aa".into(),
        "erasure",
        Some("acme".into()),
        Some("receipt-1".into()),
        None,
    );
    let counts = f.store.erase(&target, audit).await.unwrap();
    assert_eq!(
        (
            counts.memories,
            counts.versions,
            counts.history_events,
            counts.jobs
        ),
        (2, 3, 3, 1),
        "{counts:?}"
    );
    assert_eq!(
        (counts.keyword_index_entries, counts.vector_index_entries),
        (2, 2)
    );
    assert!(counts.entity_index_entries >= 2, "{counts:?}");
    assert_eq!((counts.idempotency_records, counts.api_keys), (1, 1));
    assert!(f.store.key_get("00000000000000ee").await.unwrap().is_none());
    assert!(f.store.key_get("00000000000000aa").await.unwrap().is_some());

    let v = vis();
    for id in [a1.id, a2.id] {
        assert!(f.store.get(id, v).await.unwrap().is_none());
        assert!(
            f.store.history(id).await.unwrap().is_empty(),
            "history of {id}"
        );
    }
    let erin = Filter::from_scope(&org(user("erin")));
    assert_eq!(f.store.count(&erin, v).await.unwrap(), 0);
    assert!(
        f.store
            .versions_at(&erin, v2.updated_at)
            .await
            .unwrap()
            .is_empty(),
        "no old version"
    );
    assert!(
        f.store
            .keyword_search(&erin, v, &["asthma".into()], 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        f.store
            .vector_search(&Filter::all(), v, &vector(0, 0.0), 10)
            .await
            .unwrap()
            .hits
            .iter()
            .all(|(id, _)| *id != a1.id && *id != a2.id)
    );
    assert!(
        f.store
            .entity_search(&Filter::all(), v, &["erin".into()], 10)
            .await
            .unwrap()
            .iter()
            .all(|(id, _)| *id == other_org.id)
    );
    assert!(f.store.job_get(erin_job.id).await.unwrap().is_none());
    assert!(f.store.job_get(frank_job.id).await.unwrap().is_some());
    assert_eq!(
        f.store
            .idem_begin("key:00000000000000aa", "k1", "h", t0())
            .await
            .unwrap(),
        IdemBegin::New,
        "the record is gone"
    );
    // Nobody else's data moved.
    assert!(f.store.get(keep.id, v).await.unwrap().is_some());
    assert!(
        f.store.get(other_org.id, v).await.unwrap().is_some(),
        "another org's erin is another person"
    );
    assert_eq!(f.store.history(keep.id).await.unwrap().len(), 1);
    // The audit keeps the erasure and its counts, not whom it was about.
    let log = f
        .store
        .audit_list(&AuditQuery {
            action: Some("erasure".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].1.detail["versions"], 3);
    assert!(!serde_json::to_string(&log[0].1).unwrap().contains("erin"));
    // Erasing again finds nothing; compaction runs.
    let again = AuditEvent::new(
        t0(),
        "cli".into(),
        "erasure",
        Some("acme".into()),
        None,
        None,
    );
    assert_eq!(f.store.erase(&target, again).await.unwrap().versions, 0);
    f.store.compact().await.unwrap();
    assert!(
        f.store.get(keep.id, v).await.unwrap().is_some(),
        "compaction keeps data"
    );
}

/// A healthy store reports itself writable.
pub async fn writable_probe(f: Fixture) {
    f.store.check_writable().await.unwrap();
}

/// A re-embedding writes the next model's vectors beside the current ones
/// (searches keep the old ones), resumes, refuses a switch while a version
/// lacks its new vector, then swaps every vector, label, the binding and the
/// index in one go; writes embedded with the old model are refused after it.
pub async fn reembed_migrates_then_switches(f: Fixture) {
    bound(&f).await;
    let next = ModelInfo {
        id: "suite-next@2".into(),
        dim: 4,
    };
    let v4 = |axis: usize| {
        let mut v = vec![0.0; 4];
        v[axis % 4] = 1.0;
        v
    };
    let a = memory("Ann keeps bees in Lyon", user("a"), 0);
    let b = memory("Ann plays the cello", user("a"), 1);
    let c = memory("Bo sails on weekends", user("b"), 2);
    f.store
        .apply(vec![
            insert(&a, vector(0, 0.0)),
            insert(&b, vector(1, 0.0)),
            insert(&c, vector(2, 0.0)),
        ])
        .await
        .unwrap();
    let b2 = revised(
        &b,
        "Ann plays the viola",
        b.created_at + SignedDuration::from_secs(5),
    );
    f.store
        .apply(vec![update(&b, &b2, Some(vector(1, 0.2)))])
        .await
        .unwrap();

    let err = f.store.reembed_start(&model()).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidRequest, "{err:?}");
    assert_eq!(f.store.reembed_state().await.unwrap(), None);
    let started = f.store.reembed_start(&next).await.unwrap();
    assert_eq!(
        (started.from.clone(), started.done, started.total),
        (model(), 0, 4)
    );
    assert_eq!(
        f.store.reembed_start(&next).await.unwrap(),
        started,
        "resumes"
    );
    let other = ModelInfo {
        id: "suite-other@3".into(),
        dim: 4,
    };
    let err = f.store.reembed_start(&other).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Conflict, "{err:?}");

    let first = f.store.reembed_pending(0, 2).await.unwrap();
    assert_eq!(
        first.iter().map(|i| i.text.as_str()).collect::<Vec<_>>(),
        vec![a.text.as_str(), b.text.as_str()],
        "every version, in write order"
    );
    let err = f
        .store
        .reembed_put(&next, vec![(first[0].key, vec![1.0; 8])])
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::EmbeddingModelMismatch, "{err:?}");
    let err = f
        .store
        .reembed_put(&other, vec![(first[0].key, v4(0))])
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Conflict, "{err:?}");
    f.store
        .reembed_put(&next, vec![(first[0].key, v4(3)), (first[1].key, v4(2))])
        .await
        .unwrap();
    assert_eq!(f.store.reembed_state().await.unwrap().unwrap().done, 2);

    // Not done: the switch refuses and searches still use the old vectors.
    let audit =
        || engram_core::ports::AuditEvent::new(t0(), "suite".into(), "reembed", None, None, None);
    assert_eq!(f.store.reembed_switch(&next, audit()).await.unwrap(), 2);
    let scope_a = Filter::from_scope(&user("a"));
    let hits = f
        .store
        .vector_search(&scope_a, vis(), &vector(0, 0.0), 10)
        .await
        .unwrap();
    assert_eq!(ids(&hits.hits)[0], a.id);

    // A write during the migration lands with the old model and is caught up.
    let d = memory("Ann bakes rye bread", user("a"), 3);
    f.store
        .apply(vec![insert(&d, vector(3, 0.0))])
        .await
        .unwrap();
    let rest = f.store.reembed_pending(first[1].key, 10).await.unwrap();
    assert_eq!(
        rest.iter().map(|i| i.text.as_str()).collect::<Vec<_>>(),
        vec![c.text.as_str(), b2.text.as_str(), d.text.as_str()]
    );
    let vectors: Vec<(i64, Vec<f32>)> = rest
        .iter()
        .map(|i| {
            let axis = match i.text.as_str() {
                t if t == c.text => 0,
                t if t == b2.text => 1,
                _ => 2,
            };
            (i.key, v4(axis))
        })
        .collect();
    f.store.reembed_put(&next, vectors).await.unwrap();
    assert!(f.store.reembed_pending(0, 10).await.unwrap().is_empty());
    assert_eq!(f.store.reembed_switch(&next, audit()).await.unwrap(), 0);

    // Switched: new vectors, labels, binding and index.
    assert_eq!(f.store.reembed_state().await.unwrap(), None);
    let hits = f
        .store
        .vector_search(&scope_a, vis(), &v4(3), 10)
        .await
        .unwrap();
    assert_eq!(ids(&hits.hits)[0], a.id, "{hits:?}");
    assert!((hits.hits[0].1 - 1.0).abs() < 1e-5);
    let hits = f
        .store
        .vector_search(&scope_a, vis(), &v4(1), 10)
        .await
        .unwrap();
    assert_eq!(ids(&hits.hits)[0], b.id, "the current version's new vector");
    let versions = f.store.memory_versions(&[b.id]).await.unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(
        versions[0].1,
        v4(2),
        "superseded versions are re-embedded too"
    );
    assert!(
        versions
            .iter()
            .all(|(m, v)| m.embedding_model == next.id && v.len() == 4)
    );
    assert_eq!(
        f.store
            .get(d.id, vis())
            .await
            .unwrap()
            .unwrap()
            .embedding_model,
        next.id
    );
    f.store.bind_model(&next).await.unwrap();
    let err = f.store.bind_model(&model()).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::EmbeddingModelMismatch);
    let audited = f
        .store
        .audit_list(&engram_core::ports::AuditQuery {
            action: Some("reembed".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(audited.len(), 1);

    // A write prepared with the old model is refused, whatever its length,
    // as retryable; one labelled with the new model but of the old length
    // is a mismatch.
    let late = memory("Ann moved to Porto", user("a"), 4);
    let err = f
        .store
        .apply(vec![insert(&late, vector(0, 0.0))])
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::ModelSwitched, "{err:?}");
    let err = f.store.apply(vec![insert(&late, v4(0))]).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::ModelSwitched, "{err:?}");
    assert!(!err.code.is_user_error());
    let mut odd = late.clone();
    odd.embedding_model = next.id.clone();
    let err = f
        .store
        .apply(vec![insert(&odd, vector(0, 0.0))])
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::EmbeddingModelMismatch, "{err:?}");
    let mut fresh = late.clone();
    fresh.embedding_model = next.id.clone();
    f.store.apply(vec![insert(&fresh, v4(0))]).await.unwrap();
    // An update keeping its vector, prepared before the switch (old label):
    // the store labels the kept vector with its own model.
    let mut c2 = revised(&c, &c.text, c.created_at + SignedDuration::from_secs(30));
    c2.categories = vec!["hobby".into()];
    f.store.apply(vec![update(&c, &c2, None)]).await.unwrap();
    let cv = f.store.memory_versions(&[c.id]).await.unwrap();
    assert_eq!(
        (cv[1].0.embedding_model.as_str(), cv[1].1.clone()),
        (next.id.as_str(), v4(0))
    );

    // Cancelling drops a migration and its vectors.
    assert!(!f.store.reembed_cancel().await.unwrap());
    f.store.reembed_start(&other).await.unwrap();
    let one = f.store.reembed_pending(0, 1).await.unwrap();
    f.store
        .reembed_put(&other, vec![(one[0].key, v4(0))])
        .await
        .unwrap();
    assert!(f.store.reembed_cancel().await.unwrap());
    assert_eq!(f.store.reembed_state().await.unwrap(), None);
    let again = f.store.reembed_start(&other).await.unwrap();
    assert_eq!((again.done, again.total), (0, 7));
}

#[macro_export]
macro_rules! store_suite {
    ($factory:path) => {
        $crate::store_suite!(@cases $factory;
            binds_model_and_refuses_mismatch,
            insert_and_get,
            update_versions_and_reindexes,
            delete_hides_but_keeps_history,
            batches_are_atomic,
            reads_never_cross_scopes,
            list_paginates_newest_first,
            filters_apply_to_reads,
            expired_memories_are_invisible,
            keyword_and_entity_ranking,
            neighbors_are_adjacent_turns_of_the_same_scope,
            stale_update_is_a_conflict,
            keys_round_trip,
            writable_probe,
            counts_and_scope_ids,
            jobs_lease_finish_retry_and_dead_letter,
            versions_as_they_stood,
            llm_usage_is_tallied,
            audit_records_writes,
            erasure_removes_every_trace,
            expiry_moves_and_sweep_removes_everything,
            import_writes_a_memory_once,
            reembed_migrates_then_switches,
        );
    };
    (@cases $factory:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::$case($factory().await).await;
            }
        )*
    };
}
