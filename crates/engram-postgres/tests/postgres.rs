//! Postgres-specific behaviour: the SQL compilation of filters agrees with
//! the reference evaluator, many nodes (separate pools on one database)
//! share jobs and writes safely, and bad configuration fails clearly.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use engram_core::ErrorCode;
use engram_core::access::Principal;
use engram_core::filter::Filter;
use engram_core::memory::{Event, HistoryEvent, MemoryKind, Scope};
use engram_core::ports::{Job, JobState, JobStore};
use engram_core::ports::{Store, Visibility, WriteOp};
use engram_postgres::{PgOptions, PgStore};
use engram_store_tests::{insert, memory, model, vector};
use jiff::{SignedDuration, Timestamp};
use serde_json::json;

async fn store_on(url: &str) -> PgStore {
    let store = PgStore::connect(url, PgOptions::default())
        .await
        .expect("connect");
    store.bind_model(&model()).await.expect("bind");
    store
}

fn vis() -> Visibility {
    Visibility {
        now: Timestamp::from_second(1_900_000_000).unwrap(),
    }
}

/// Every operator of the filter language, on every kind of field, including
/// missing and null values under NOT: SQL and the evaluator pick the same rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_filters_agree_with_the_evaluator() {
    let url = engram_testkit::pg::fresh_database().await;
    let store = store_on(&url).await;
    let users = [Some("ann"), Some("bob"), None];
    let agents = [Some("helper"), None];
    let cities = [
        json!("Lisbon"),
        json!("porto"),
        json!(null),
        json!(3),
        json!(["Lisbon", "Rome"]),
    ];
    let kinds = [
        MemoryKind::Semantic,
        MemoryKind::Episodic,
        MemoryKind::Procedural,
    ];
    let texts = [
        "Ann moved to Lisbon",
        "bob likes PORTO wine",
        "The meeting is on Friday",
        "Use tabs, not spaces",
        "Ünïcode café in Zürich",
    ];
    let mut all = Vec::new();
    let mut ops = Vec::new();
    for i in 0..60usize {
        let scope = Scope {
            org_id: Some("acme".into()),
            user_id: users[i % 3].map(Into::into),
            agent_id: agents[i % 2].map(Into::into),
            run_id: (i % 5 == 0).then(|| format!("run-{}", i % 10)),
            ..Default::default()
        };
        let mut m = memory(texts[i % texts.len()], scope, i as i64 * 60);
        m.kind = kinds[i % 3];
        if i % 4 != 3 {
            m.metadata
                .insert("city".into(), cities[i % cities.len()].clone());
        }
        m.metadata.insert("n".into(), json!(i as f64 / 2.0));
        if i % 6 == 0 {
            m.categories = vec!["Food".into(), "travel".into()];
        } else if i % 6 == 1 {
            m.categories = vec!["work".into()];
        }
        ops.push(insert(&m, vector(i, 0.1)));
        all.push(m);
    }
    store.apply(ops).await.expect("insert");
    let t = |s: i64| {
        (Timestamp::from_second(1_750_000_000).unwrap() + SignedDuration::from_secs(s)).to_string()
    };
    let filters = [
        json!({}),
        json!({"user_id": "ann"}),
        json!({"user_id": {"ne": "ann"}}),
        json!({"user_id": {"in": ["ann", "bob"]}}),
        json!({"user_id": {"nin": ["ann"]}}),
        json!({"user_id": "*"}),
        json!({"NOT": {"user_id": "ann"}}),
        json!({"NOT": {"agent_id": "*"}}),
        json!({"OR": [{"user_id": "bob"}, {"run_id": "run-0"}]}),
        json!({"AND": [{"org_id": "acme"}, {"NOT": {"OR": [{"user_id": "ann"}, {"agent_id": "helper"}]}}]}),
        json!({"created_at": {"gte": t(600), "lt": t(1800)}}),
        json!({"updated_at": {"gt": t(3000)}}),
        json!({"kind": "episodic"}),
        json!({"kind": {"in": ["semantic", "procedural"]}}),
        json!({"kind": {"ne": "semantic"}}),
        json!({"categories": {"contains": "food"}}),
        json!({"categories": {"in": ["WORK", "travel"]}}),
        json!({"NOT": {"categories": {"contains": "work"}}}),
        json!({"metadata": {"city": "Lisbon"}}),
        json!({"metadata": {"city": {"ne": "Lisbon"}}}),
        json!({"metadata": {"city": {"in": ["Lisbon", 3]}}}),
        json!({"metadata": {"city": {"nin": ["Lisbon"]}}}),
        json!({"metadata": {"city": "*"}}),
        json!({"NOT": {"metadata": {"city": "*"}}}),
        json!({"metadata": {"city": {"contains": "Lis"}}}),
        json!({"metadata": {"city": {"icontains": "PORTO"}}}),
        json!({"metadata": {"city": {"contains": "Rome"}}}),
        json!({"metadata": {"n": {"gt": 10}}}),
        json!({"metadata": {"n": {"lte": 3.5}}}),
        json!({"metadata": {"n": 4}}),
        json!({"metadata": {"city": {"gt": "M"}}}),
        json!({"metadata": {"city": {"lt": 5}}}),
        json!({"keywords": {"contains": "Lisbon"}}),
        json!({"keywords": {"icontains": "porto"}}),
        json!({"keywords": {"icontains": "CAFÉ"}}),
        json!({"NOT": {"keywords": {"contains": "Friday"}}}),
    ];
    for raw in filters {
        let filter = Filter::parse(&raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
        let expected: BTreeSet<_> = all
            .iter()
            .filter(|m| filter.matches(*m))
            .map(|m| m.id)
            .collect();
        let got: BTreeSet<_> = store
            .list(&filter, vis(), None, 1000)
            .await
            .unwrap_or_else(|e| panic!("{raw}: {e}"))
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(got, expected, "filter {raw}");
        assert_eq!(
            store.count(&filter, vis()).await.unwrap(),
            expected.len(),
            "count {raw}"
        );
    }
    // Metadata comes back as written, key order included.
    let first = store.get(all[0].id, vis()).await.unwrap().unwrap();
    assert_eq!(first.metadata, all[0].metadata);
    let keys: Vec<&String> = first.metadata.keys().collect();
    assert_eq!(keys, vec!["city", "n"]);
}

fn job(n: usize) -> Job {
    let at = Timestamp::from_second(1_750_000_000).unwrap() + SignedDuration::from_millis(n as i64);
    Job {
        id: uuid::Uuid::now_v7(),
        kind: "add".into(),
        state: JobState::Queued,
        payload: json!({"n": n}),
        principal: Principal::operator(),
        scope: Scope::default(),
        request_id: None,
        attempts: 0,
        max_attempts: 3,
        last_error: None,
        result: None,
        created_at: at,
        updated_at: at,
        run_after: at,
        lease_owner: None,
        lease_until: None,
        ordering: None,
    }
}

/// Four workers on two "nodes" (two pools) drain one queue: every job is
/// claimed exactly once, and an expired lease is taken over by another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_on_two_nodes_claim_each_job_once() {
    let url = engram_testkit::pg::fresh_database().await;
    let nodes = [store_on(&url).await, store_on(&url).await];
    for n in 0..300 {
        nodes[n % 2].job_insert(&job(n)).await.unwrap();
    }
    let now = Timestamp::from_second(1_760_000_000).unwrap();
    let lease = Duration::from_secs(60);
    let mut tasks = Vec::new();
    // Every worker holds a claimed job before any goes on: the claims really
    // are concurrent, however the workers happen to be scheduled.
    let all_holding = Arc::new(tokio::sync::Barrier::new(4));
    for w in 0..4 {
        let store = nodes[w % 2].clone();
        let all_holding = all_holding.clone();
        tasks.push(tokio::spawn(async move {
            let worker = format!("node{}-w{w}", w % 2);
            let mut done = Vec::new();
            while let Some(job) = store.job_claim(&worker, now, lease, true).await.unwrap() {
                if done.is_empty() {
                    all_holding.wait().await;
                }
                assert_eq!(job.lease_owner.as_deref(), Some(worker.as_str()));
                store
                    .apply(vec![WriteOp::FinishJob {
                        id: job.id,
                        worker: worker.clone(),
                        result: json!({"by": worker}),
                        at: now,
                    }])
                    .await
                    .unwrap();
                done.push(job.id);
            }
            done
        }));
    }
    let mut runs: HashMap<uuid::Uuid, usize> = HashMap::new();
    let mut per_worker = Vec::new();
    for t in tasks {
        let done = t.await.unwrap();
        per_worker.push(done.len());
        for id in done {
            *runs.entry(id).or_default() += 1;
        }
    }
    assert_eq!(runs.len(), 300, "none lost");
    assert!(runs.values().all(|n| *n == 1), "none run twice");
    assert!(
        per_worker.iter().all(|n| *n > 0),
        "all workers took jobs: {per_worker:?}"
    );
    let counts = nodes[0].job_counts().await.unwrap();
    assert_eq!((counts.done, counts.queued, counts.running), (300, 0, 0));

    // A node dies holding a lease: after it runs out the other node takes the job,
    // and the dead node's late completion is refused.
    let j = job(1000);
    nodes[0].job_insert(&j).await.unwrap();
    let held = nodes[0]
        .job_claim("dying", now, lease, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(held.id, j.id);
    assert!(
        nodes[1]
            .job_claim("other", now, lease, true)
            .await
            .unwrap()
            .is_none()
    );
    let later = now + SignedDuration::from_secs(61);
    let taken = nodes[1]
        .job_claim("other", later, lease, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((taken.id, taken.attempts), (j.id, 2));
    let late = nodes[0]
        .apply(vec![WriteOp::FinishJob {
            id: j.id,
            worker: "dying".into(),
            result: json!({}),
            at: later,
        }])
        .await
        .unwrap_err();
    assert_eq!(late.code, ErrorCode::Conflict, "{}", late.message);
}

/// Two nodes update the same memory from the same version at once: one wins,
/// the other gets a conflict, and exactly one current version remains.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_updates_from_two_nodes_conflict_cleanly() {
    let url = engram_testkit::pg::fresh_database().await;
    let a = store_on(&url).await;
    let b = store_on(&url).await;
    for round in 0..20 {
        let m = memory(
            &format!("fact {round}"),
            engram_store_tests::user("ann"),
            round,
        );
        a.apply(vec![insert(&m, vector(round as usize, 0.0))])
            .await
            .unwrap();
        let update = |text: &str| {
            let mut next = m.clone();
            next.version = 2;
            next.text = text.into();
            next.updated_at = m.updated_at + SignedDuration::from_secs(1);
            WriteOp::Update {
                history: HistoryEvent {
                    id: uuid::Uuid::now_v7(),
                    memory_id: m.id,
                    event: Event::Update,
                    old_text: Some(m.text.clone()),
                    new_text: Some(text.into()),
                    version: 2,
                    actor: None,
                    reason: None,
                    request_id: None,
                    scope: m.scope.clone(),
                    created_at: next.updated_at,
                },
                memory: next,
                embedding: None,
            }
        };
        let (ra, rb) = tokio::join!(
            a.apply(vec![update("from node a")]),
            b.apply(vec![update("from node b")])
        );
        let outcomes = [ra.is_ok(), rb.is_ok()];
        assert_eq!(
            outcomes.iter().filter(|ok| **ok).count(),
            1,
            "round {round}: {outcomes:?}"
        );
        let err = ra.err().or(rb.err()).unwrap();
        assert_eq!(err.code, ErrorCode::Conflict, "{}", err.message);
        let now = a.get(m.id, vis()).await.unwrap().unwrap();
        assert_eq!(now.version, 2);
        assert_eq!(a.history(m.id).await.unwrap().len(), 2);
    }
}

/// Nodes starting together migrate the schema once; a second start is a no-op.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_starting_together_migrate_once() {
    let url = engram_testkit::pg::fresh_database().await;
    let starts: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { store_on(&url).await })
        })
        .collect();
    let mut stores = Vec::new();
    for s in starts {
        stores.push(Arc::new(s.await.unwrap()));
    }
    let m = memory("shared", engram_store_tests::user("ann"), 0);
    stores[0]
        .apply(vec![insert(&m, vector(0, 0.0))])
        .await
        .unwrap();
    for s in &stores {
        assert_eq!(s.get(m.id, vis()).await.unwrap().unwrap().text, "shared");
    }
}

#[tokio::test]
async fn bad_urls_and_unreachable_servers_fail_clearly() {
    let Err(e) = PgStore::connect("postgres://u@127.0.0.1:notaport/db", PgOptions::default()).await
    else {
        panic!("a bad URL was accepted")
    };
    assert!(
        e.message.contains("not a valid Postgres URL"),
        "{}",
        e.message
    );
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let Err(e) = PgStore::connect(
        &format!("postgres://u@127.0.0.1:{port}/db"),
        PgOptions {
            connect_timeout: Duration::from_secs(2),
            ..PgOptions::default()
        },
    )
    .await
    else {
        panic!("connected to nothing")
    };
    assert!(
        e.message.contains(&format!(
            "cannot connect to Postgres at 127.0.0.1:{port}/db"
        )),
        "{}",
        e.message
    );
}

/// A connection of the test's own to `url`, beside the store's pool.
async fn raw(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// `(oid, valid)` of the HNSW index, if it exists.
async fn hnsw(db: &tokio_postgres::Client) -> Option<(u32, bool)> {
    db.query_opt(
        "SELECT indexrelid, indisvalid FROM pg_index WHERE indexrelid = to_regclass('memories_hnsw')",
        &[],
    )
    .await
    .unwrap()
    .map(|r| (r.get(0), r.get(1)))
}

/// A failed concurrent HNSW build (a re-embedding switch's, or a starting
/// node's) leaves an INVALID index behind: the next node to start drops and
/// rebuilds it in the background (`flush` waits). An index still being built
/// is left to its builder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_hnsw_index_is_rebuilt_at_start_unless_being_built() {
    let url = engram_testkit::pg::fresh_database().await;
    let first = store_on(&url).await;
    for i in 0..20 {
        let m = memory(
            &format!("fact {i}"),
            engram_store_tests::user("ann"),
            i as i64,
        );
        first
            .apply(vec![insert(&m, vector(i as usize, 0.0))])
            .await
            .unwrap();
    }
    let db = raw(&url).await;
    let (built, _) = hnsw(&db).await.unwrap();
    // What a failed CREATE INDEX CONCURRENTLY leaves behind.
    db.batch_execute(
        "UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'memories_hnsw'::regclass",
    )
    .await
    .unwrap();
    let second = store_on(&url).await;
    second.flush().await.unwrap();
    let (rebuilt, valid) = hnsw(&db).await.unwrap();
    assert!(valid, "rebuilt valid");
    assert_ne!(rebuilt, built, "a new index");

    // A build in progress: CREATE INDEX CONCURRENTLY waits for a transaction
    // holding an older snapshot, its index INVALID meanwhile.
    let builder = raw(&url).await;
    builder
        .batch_execute("DROP INDEX memories_hnsw")
        .await
        .unwrap();
    let blocker = raw(&url).await;
    blocker
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM memories;")
        .await
        .unwrap();
    let build = tokio::spawn(async move {
        builder
            .batch_execute(
                "CREATE INDEX CONCURRENTLY memories_hnsw ON memories \
                 USING hnsw (embedding vector_cosine_ops) WHERE invalid_at IS NULL",
            )
            .await
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let building = loop {
        if let Some((oid, false)) = hnsw(&db).await {
            break oid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the build never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let third = tokio::time::timeout(Duration::from_secs(60), store_on(&url))
        .await
        .expect("a start does not wait for another session's index build");
    // Nothing to wait for: this node started no build of its own.
    tokio::time::timeout(Duration::from_secs(30), third.flush())
        .await
        .expect("no rebuild started over a build in progress")
        .unwrap();
    assert_eq!(
        hnsw(&db).await,
        Some((building, false)),
        "left to its builder"
    );
    assert!(!build.is_finished());
    blocker.batch_execute("COMMIT").await.unwrap();
    build.await.unwrap().unwrap();
    assert_eq!(hnsw(&db).await, Some((building, true)));
}
