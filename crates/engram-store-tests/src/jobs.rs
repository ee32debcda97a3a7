//! Jobs, LLM usage tallies and API keys.

use std::sync::Arc;

use engram_core::ErrorCode;
use engram_core::memory::Scope;
use engram_core::ports::WriteOp;
use jiff::SignedDuration;
use serde_json::json;

use crate::fixture::*;

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
        ordering: None,
    };
    let j1 = job(1);
    f.store.job_insert(&j1).await.unwrap();
    assert_eq!(f.store.job_get(j1.id).await.unwrap().unwrap(), j1);
    let claimed = f
        .store
        .job_claim("w1", at(2), lease, true)
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
            .job_claim("w2", at(3), lease, true)
            .await
            .unwrap()
            .is_none(),
        "leased to w1"
    );
    // The heartbeat: only the holder renews, and a renewed lease outlives the first one.
    assert!(!f.store.job_renew(j1.id, "w2", at(500)).await.unwrap());
    assert!(f.store.job_renew(j1.id, "w1", at(500)).await.unwrap());
    assert!(
        f.store
            .job_claim("w2", at(100), lease, true)
            .await
            .unwrap()
            .is_none(),
        "past the first lease, the renewed one holds"
    );
    assert_eq!(
        f.store.job_get(j1.id).await.unwrap().unwrap().lease_until,
        Some(at(500))
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
        .job_claim("w1", at(10), lease, true)
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
            .job_claim("w2", at(20), lease, true)
            .await
            .unwrap()
            .is_none(),
        "not due yet"
    );
    let c = f
        .store
        .job_claim("w2", at(30), lease, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.attempts, 2);
    // w2 dies; after its lease, w3 takes over and w2 can no longer report.
    let c = f
        .store
        .job_claim("w3", at(91), lease, true)
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
    let dead = f
        .store
        .job_list(Some(JobState::Dead), None, 10)
        .await
        .unwrap();
    assert_eq!(dead.iter().map(|j| j.id).collect::<Vec<_>>(), vec![j2.id]);
    assert_eq!(f.store.job_list(None, None, 10).await.unwrap().len(), 2);
    let of_kind = |kind| f.store.job_list(None, Some(kind), 10);
    assert_eq!(of_kind("add").await.unwrap().len(), 2);
    assert!(of_kind("webhook").await.unwrap().is_empty());
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

/// `Idempotency-Key` records: a caller keeps at most its cap (the oldest
/// go first, nobody else's), and a purge removes those past their time.
pub async fn idempotency_records_expire_and_are_capped(f: Fixture) {
    use engram_core::ports::{IdemBegin, StoredResponse};
    let at = |s: i64| t0() + SignedDuration::from_secs(s);
    let done = StoredResponse {
        status: 200,
        content_type: "application/json".into(),
        body: b"{}".to_vec(),
    };
    for (i, key) in ["k1", "k2", "k3", "k4"].into_iter().enumerate() {
        let began = f
            .store
            .idem_begin("key:a", key, "h", at(i as i64 + 1), 3)
            .await
            .unwrap();
        assert_eq!(began, IdemBegin::New, "{key}");
        f.store.idem_complete("key:a", key, &done).await.unwrap();
    }
    assert_eq!(
        f.store
            .idem_begin("key:b", "k1", "h", at(1), 3)
            .await
            .unwrap(),
        IdemBegin::New
    );
    for key in ["k2", "k3", "k4"] {
        assert_eq!(
            f.store
                .idem_begin("key:a", key, "h", at(9), 3)
                .await
                .unwrap(),
            IdemBegin::Replay(done.clone()),
            "{key} is among the newest three"
        );
    }
    // Before at(3): key:a's k2 (at 2) and key:b's k1 (at 1).
    assert_eq!(f.store.idem_purge(at(3), 100).await.unwrap(), 2);
    assert_eq!(
        f.store
            .idem_begin("key:a", "k2", "h", at(9), 3)
            .await
            .unwrap(),
        IdemBegin::New,
        "purged"
    );
    assert_eq!(
        f.store
            .idem_begin("key:a", "k3", "h", at(9), 3)
            .await
            .unwrap(),
        IdemBegin::Replay(done)
    );
    assert_eq!(
        f.store
            .idem_begin("key:a", "k1", "h", at(9), 3)
            .await
            .unwrap(),
        IdemBegin::New,
        "the oldest was dropped when k4 came"
    );
}

/// Claims are fair across tenants: the org with the fewest jobs running
/// goes first, then the oldest job; and each org's pending jobs are counted.
pub async fn job_claims_take_turns_across_orgs(f: Fixture) {
    use engram_core::access::Principal;
    use engram_core::ports::{Job, JobState};
    let at = |s: i64| t0() + SignedDuration::from_secs(s);
    let job = |org: &str, s: i64| Job {
        id: uuid::Uuid::now_v7(),
        kind: "add".into(),
        state: JobState::Queued,
        payload: json!({}),
        principal: Principal::operator(),
        scope: Scope {
            org_id: Some(org.into()),
            user_id: Some("u".into()),
            ..Default::default()
        },
        request_id: None,
        attempts: 0,
        max_attempts: 3,
        last_error: None,
        result: None,
        created_at: at(s),
        updated_at: at(s),
        run_after: at(s),
        lease_owner: None,
        lease_until: None,
        ordering: None,
    };
    // A busy tenant queued three jobs before a quiet one queued its first.
    let busy: Vec<Job> = (0..3).map(|i| job("busy", i)).collect();
    let quiet = job("quiet", 10);
    for j in busy.iter().chain([&quiet]) {
        f.store.job_insert(j).await.unwrap();
    }
    assert_eq!(f.store.job_pending(Some("busy")).await.unwrap(), 3);
    assert_eq!(f.store.job_pending(Some("quiet")).await.unwrap(), 1);
    assert_eq!(f.store.job_pending(None).await.unwrap(), 0);
    let lease = std::time::Duration::from_secs(60);
    let first = f
        .store
        .job_claim("w1", at(20), lease, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.id, busy[0].id, "the oldest first");
    let second = f
        .store
        .job_claim("w2", at(20), lease, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        second.id, quiet.id,
        "the quiet org's job before the busy org's second"
    );
    let third = f
        .store
        .job_claim("w3", at(20), lease, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(third.id, busy[1].id);
    assert_eq!(
        f.store.job_pending(Some("busy")).await.unwrap(),
        3,
        "running counts"
    );
}
