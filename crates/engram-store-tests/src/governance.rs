//! The audit trail, erasure and the expiry sweep.

use engram_core::filter::Filter;
use engram_core::memory::{Event, MemoryId, Scope};
use engram_core::ports::{Visibility, WriteOp};
use jiff::SignedDuration;
use serde_json::json;

use crate::fixture::*;

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

/// An erasure stays within the caller's binding: erasing user erin as a
/// key bound to app `a1` removes her data in `a1` only — not in app `a2`,
/// not what she said outside any app, not another org's erin — together
/// with what names her in `a1` (jobs, usage, keys bound to her in `a1`).
pub async fn erasure_stays_within_the_binding(f: Fixture) {
    use engram_core::access::{Principal, Role};
    use engram_core::memory::ScopeField;
    use engram_core::ports::{ApiKey, AuditEvent, ErasureTarget, Job, JobState, UsageRow};
    bound(&f).await;
    let scope = |org: &str, app: Option<&str>| Scope {
        org_id: Some(org.into()),
        app_id: app.map(Into::into),
        user_id: Some("erin".into()),
        ..Default::default()
    };
    let in_a1 = memory("Erin's a1 secret", scope("acme", Some("a1")), 1);
    let in_a2 = memory("Erin's a2 note", scope("acme", Some("a2")), 2);
    let no_app = memory("Erin said this outside any app", scope("acme", None), 3);
    let globex = memory("Another erin, in globex a1", scope("globex", Some("a1")), 4);
    f.store
        .apply(vec![
            insert(&in_a1, vector(0, 0.0)),
            insert(&in_a2, vector(1, 0.0)),
            insert(&no_app, vector(2, 0.0)),
            insert(&globex, vector(3, 0.0)),
        ])
        .await
        .unwrap();
    for (i, s) in [scope("acme", Some("a1")), scope("acme", Some("a2"))]
        .into_iter()
        .enumerate()
    {
        let job = Job {
            id: uuid::Uuid::now_v7(),
            kind: "add".into(),
            state: JobState::Queued,
            payload: json!({"content": {"text": format!("queued {i}")}}),
            principal: Principal::operator(),
            scope: s.clone(),
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
            ordering: None,
        };
        f.store.job_insert(&job).await.unwrap();
        let usage = UsageRow {
            scope: s,
            day: "2026-11-01".into(),
            model: "m".into(),
            runs: 1,
            prompt_tokens: 1,
            completion_tokens: 1,
            cost_microdollars: 1,
        };
        f.store
            .apply(vec![WriteOp::RecordUsage(usage)])
            .await
            .unwrap();
    }
    let key = |id: &str, app: Option<&str>| ApiKey {
        id: id.into(),
        name: "k".into(),
        role: Role::ReadWrite,
        binding: Scope {
            org_id: Some("acme".into()),
            app_id: app.map(Into::into),
            user_id: Some("erin".into()),
            ..Default::default()
        },
        rate_limit: None,
        created_at: t0(),
        created_by: "cli".into(),
        revoked_at: None,
    };
    for k in [
        key("00000000000000a1", Some("a1")),
        key("00000000000000b0", None),
    ] {
        let ev = AuditEvent::new(
            t0(),
            "cli".into(),
            "key.create",
            Some("acme".into()),
            None,
            None,
        );
        f.store.key_insert(&k, "h", &ev).await.unwrap();
    }

    let target = ErasureTarget {
        field: ScopeField::User,
        id: "erin".into(),
        within: Scope {
            org_id: Some("acme".into()),
            app_id: Some("a1".into()),
            ..Default::default()
        },
    };
    let audit = AuditEvent::new(
        t0(),
        "key:admin-a1".into(),
        "erasure",
        Some("acme".into()),
        None,
        None,
    );
    let c = f.store.erase(&target, audit).await.unwrap();
    assert_eq!(
        (c.memories, c.jobs, c.llm_usage_rows, c.api_keys),
        (1, 1, 1, 1),
        "{c:?}"
    );
    let left = f
        .store
        .get_many(&[in_a1.id, in_a2.id, no_app.id, globex.id], vis())
        .await
        .unwrap();
    let left: Vec<MemoryId> = left.iter().map(|m| m.id).collect();
    assert_eq!(left, vec![in_a2.id, no_app.id, globex.id]);
    assert!(f.store.history(in_a1.id).await.unwrap().is_empty());
    assert_eq!(f.store.history(in_a2.id).await.unwrap().len(), 1);
    let jobs = f.store.job_list(None, None, 10).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].scope.app_id.as_deref(), Some("a2"));
    let usage = f.store.usage(10).await.unwrap();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].scope.app_id.as_deref(), Some("a2"));
    let keys: Vec<String> = f
        .store
        .key_list()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(keys, vec!["00000000000000b0".to_owned()]);
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
        ordering: None,
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
            .idem_begin("key:00000000000000aa", "k1", "h", t0(), 100)
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
        within: Scope {
            org_id: Some("acme".into()),
            ..Default::default()
        },
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
            .versions_at(&erin, v2.updated_at, 100)
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
            .idem_begin("key:00000000000000aa", "k1", "h", t0(), 100)
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
