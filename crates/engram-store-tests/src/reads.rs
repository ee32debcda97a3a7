//! Reads over scopes: isolation, listing, filters, expiry, the three signals, neighbours, counts, the writable probe.

use engram_core::filter;
use engram_core::filter::Filter;
use engram_core::memory::{Event, MemoryId, MemoryKind, Scope};
use engram_core::ports::{Cursor, VectorPath, Visibility, WriteOp};
use jiff::SignedDuration;
use serde_json::json;

use crate::fixture::*;

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

/// A scope's keyword scores are its own: another tenant writing the same
/// words (which would make them common store-wide) changes neither the
/// scores nor the order. Global term statistics would leak one tenant's
/// vocabulary into another's ranking.
pub async fn keyword_scores_ignore_other_scopes(f: Fixture) {
    bound(&f).await;
    let mine = [
        memory("Ramen night with miso broth", user("tenant-a"), 0),
        memory("Miso soup recipe from Kyoto", user("tenant-a"), 1),
        memory("The garden party was fun", user("tenant-a"), 2),
        memory("Ramen shop near the office", user("tenant-a"), 3),
    ];
    f.store
        .apply(
            mine.iter()
                .enumerate()
                .map(|(i, m)| insert(m, vector(i, 0.0)))
                .collect(),
        )
        .await
        .unwrap();
    let scope = Filter::from_scope(&user("tenant-a"));
    let terms = ["miso".to_owned(), "ramen".to_owned()];
    let before = f
        .store
        .keyword_search(&scope, vis(), &terms, 10)
        .await
        .unwrap();
    assert_eq!(before.len(), 3);
    assert_eq!(before[0].0, mine[0].id, "both words first");
    let others: Vec<WriteOp> = (0..60)
        .map(|i| {
            let m = memory(
                &format!("miso tasting number {i}"),
                user("tenant-b"),
                10 + i,
            );
            insert(&m, vector(i as usize % 4, 0.1))
        })
        .collect();
    f.store.apply(others).await.unwrap();
    let after = f
        .store
        .keyword_search(&scope, vis(), &terms, 10)
        .await
        .unwrap();
    assert_eq!(ids(&after), ids(&before));
    for ((_, a), (_, b)) in before.iter().zip(&after) {
        assert!((a - b).abs() < 1e-6, "score moved from {a} to {b}");
    }
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

/// A healthy store reports itself writable.
pub async fn writable_probe(f: Fixture) {
    f.store.check_writable().await.unwrap();
}
