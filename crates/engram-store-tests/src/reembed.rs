//! Re-embedding: a migration's vectors beside the current ones, then the switch.

use engram_core::ErrorCode;
use engram_core::filter::Filter;
use engram_core::ports::ModelInfo;
use jiff::SignedDuration;

use crate::fixture::*;

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
