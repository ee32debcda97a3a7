//! The store conformance suite against SQLite, plus SQLite-specific behaviour.

use std::sync::Arc;

use engram_core::filter::Filter;
use engram_core::ports::{Store, VectorPath};
use engram_index::IndexConfig;
use engram_sqlite::{GRAPH_FILE, SqliteOptions, SqliteStore};
use engram_store_tests::{Fixture, insert, memory, model, user, vector};

async fn fixture_with(options: SqliteOptions) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open_async(dir.path().to_owned(), options)
        .await
        .expect("open");
    Fixture {
        store: Arc::new(store),
        guard: Box::new(dir),
    }
}

async fn sqlite() -> Fixture {
    fixture_with(SqliteOptions::default()).await
}

/// The same suite with every vector search forced through the HNSW graph.
async fn sqlite_hnsw() -> Fixture {
    fixture_with(SqliteOptions {
        index: IndexConfig {
            exact_threshold: 0,
            ..Default::default()
        },
        ..Default::default()
    })
    .await
}

engram_store_tests::store_suite!(sqlite);

mod hnsw_path {
    engram_store_tests::store_suite!(super::sqlite_hnsw);
}

fn vis() -> engram_core::ports::Visibility {
    engram_core::ports::Visibility {
        now: jiff::Timestamp::from_second(1_760_000_000).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_follows_the_filtered_set_size() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        index: IndexConfig {
            exact_threshold: 50,
            ..Default::default()
        },
        ..Default::default()
    };
    let store = SqliteStore::open_async(dir.path().to_owned(), options)
        .await
        .unwrap();
    store.bind_model(&model()).await.unwrap();
    let mut ops = Vec::new();
    for i in 0..200 {
        let u = if i < 160 { "big" } else { "small" };
        ops.push(insert(
            &memory(&format!("note {i}"), user(u), i),
            vector(i as usize, 0.01 * i as f32),
        ));
    }
    store.apply(ops).await.unwrap();
    let big = store
        .vector_search(&Filter::from_scope(&user("big")), vis(), &vector(0, 0.0), 5)
        .await
        .unwrap();
    assert_eq!((big.path, big.estimated), (VectorPath::Hnsw, 160));
    let small = store
        .vector_search(
            &Filter::from_scope(&user("small")),
            vis(),
            &vector(0, 0.0),
            5,
        )
        .await
        .unwrap();
    assert_eq!((small.path, small.estimated), (VectorPath::Exact, 40));
    assert_eq!(small.hits.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_restores_records_and_vector_index() {
    let dir = tempfile::tempdir().unwrap();
    let a = memory("Alice moved to Lisbon", user("alice"), 0);
    {
        let store = SqliteStore::open_async(dir.path().to_owned(), SqliteOptions::default())
            .await
            .unwrap();
        store.bind_model(&model()).await.unwrap();
        store.apply(vec![insert(&a, vector(2, 0.0))]).await.unwrap();
        store.flush().await.unwrap();
        assert!(
            dir.path().join(GRAPH_FILE).exists(),
            "flush saves the graph"
        );
        // A write after the flush is not in the saved graph: reopening must catch it up.
        let b = memory("written after the flush", user("alice"), 1);
        store.apply(vec![insert(&b, vector(5, 0.0))]).await.unwrap();
    }
    for remove_graph in [false, true] {
        if remove_graph {
            std::fs::remove_file(dir.path().join(GRAPH_FILE)).unwrap();
        }
        let store = SqliteStore::open_async(dir.path().to_owned(), SqliteOptions::default())
            .await
            .unwrap();
        store.bind_model(&model()).await.unwrap();
        assert_eq!(
            store.get(a.id, vis()).await.unwrap().unwrap().text,
            "Alice moved to Lisbon"
        );
        let scope = Filter::from_scope(&user("alice"));
        let hits = store
            .vector_search(&scope, vis(), &vector(5, 0.0), 1)
            .await
            .unwrap();
        assert!((hits.hits[0].1 - 1.0).abs() < 1e-4);
        assert_eq!(
            store.stats().await.unwrap().indexed_vectors,
            2,
            "graph holds both (rebuilt: {remove_graph})"
        );
        assert_eq!(store.integrity_check().await.unwrap(), "ok");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_writable_while_another_process_holds_the_write_lock() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_async(dir.path().to_owned(), SqliteOptions::default())
        .await
        .unwrap();
    store.check_writable().await.unwrap();
    // What a backup tool or a stuck second process does: hold the write lock.
    let other = rusqlite::Connection::open(dir.path().join(engram_sqlite::DB_FILE)).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE;").unwrap();
    let e = store.check_writable().await.unwrap_err();
    assert_eq!(e.code, engram_core::ErrorCode::StoreFailure);
    assert!(e.message.contains("cannot take writes"), "{}", e.message);
    other.execute_batch("ROLLBACK;").unwrap();
    store.check_writable().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_open_beside_a_running_store() {
    use engram_core::ports::KeyStore;
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_async(dir.path().to_owned(), SqliteOptions::default())
        .await
        .unwrap();
    // `engram keys create` against a directory a server has open.
    let cli = engram_sqlite::SqliteKeys::open(dir.path(), None).unwrap();
    let key = engram_core::ports::ApiKey {
        id: "0123456789abcdef".into(),
        name: "ops".into(),
        role: engram_core::access::Role::Admin,
        binding: engram_core::memory::Scope {
            org_id: Some("acme".into()),
            ..Default::default()
        },
        rate_limit: None,
        created_at: jiff::Timestamp::from_second(1_760_000_000).unwrap(),
        created_by: "cli".into(),
        revoked_at: None,
    };
    let audit = engram_core::ports::AuditEvent::new(
        key.created_at,
        "cli".into(),
        "key.create",
        key.binding.org_id.clone(),
        Some(key.id.clone()),
        None,
    );
    cli.key_insert(&key, "h", &audit).await.unwrap();
    assert_eq!(store.key_get(&key.id).await.unwrap().unwrap().0, key);
}
