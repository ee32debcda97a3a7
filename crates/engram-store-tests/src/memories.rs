//! Writes and single-memory reads: model binding, insert, update, delete, atomic batches, versions as they stood, import.

use engram_core::ErrorCode;
use engram_core::filter::Filter;
use engram_core::memory::{Entity, Event, Memory, text_hash};
use engram_core::ports::{ModelInfo, WriteOp};
use jiff::SignedDuration;
use serde_json::json;

use crate::fixture::*;

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
        texts(f.store.versions_at(&bo, at(15), 100).await.unwrap()),
        vec![
            ("Bo has a boat".to_owned(), vector(1, 0.0)),
            ("Bo lives in Oslo".to_owned(), vector(0, 0.0))
        ]
    );
    assert_eq!(
        texts(f.store.versions_at(&bo, at(25), 100).await.unwrap()),
        vec![("Bo lives in Bergen".to_owned(), vector(3, 0.0))]
    );
    assert!(
        f.store
            .versions_at(&bo, at(5), 100)
            .await
            .unwrap()
            .is_empty()
    );
    // At most `limit`: an `as_of` search never loads a whole scope.
    assert_eq!(f.store.versions_at(&bo, at(15), 1).await.unwrap().len(), 1);
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
